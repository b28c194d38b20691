package applier

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/heed-dev/heed/dedup"
)

// EventError reports that one event of a batch can never be applied: a
// Handler returns it (from Apply, Loaded.Queue or a queued write's callback)
// to have that event quarantined with Reason. The applier then rolls the
// batch back and applies it again without the event, which it quarantines and
// whose key's later events it parks until an operator re-drives or drops it.
// Business rejections (no funds, unknown account) are results, not EventErrors.
type EventError struct {
	// Offset is the event's offset in its partition (Event.Offset).
	Offset int64
	// Reason says why the event can never apply; it is stored with it.
	Reason string
}

func (e *EventError) Error() string {
	return fmt.Sprintf("event at offset %d can never apply: %s", e.Offset, e.Reason)
}

// Quarantine returns the error a Handler returns to have ev quarantined with
// reason instead of applied (see EventError).
func Quarantine(ev Event, reason string) error {
	return &EventError{Offset: ev.Offset, Reason: reason}
}

// ErrorClass is what a failed batch calls for. Classify decides it, once, for
// every failure of a batch.
type ErrorClass int

const (
	// Transient failures (the database or the broker unreachable, a
	// serialization failure or deadlock, a timeout, any error nothing marks
	// as caused by an event) are retried with backoff until they succeed.
	// Nothing is ever skipped for them.
	Transient ErrorClass = iota
	// Systemic failures come from how the database is set up, not from an
	// event (a missing table or column, missing privileges, a missing
	// schema): retried like Transient, and logged as errors, since they need
	// an operator (often `heed migrate`).
	Systemic
	// EventCaused failures may be caused by one event of the batch (a data
	// exception such as text Postgres cannot store, a constraint violation):
	// the batch is split until the event is found; an event that fails alone,
	// twice, is quarantined and the rest of the batch applies.
	EventCaused
	// Poison is an EventError: the Handler named the event, which is
	// quarantined at once.
	Poison
)

func (c ErrorClass) String() string {
	switch c {
	case Transient:
		return "transient"
	case Systemic:
		return "systemic"
	case EventCaused:
		return "event-caused"
	case Poison:
		return "poison"
	}
	return fmt.Sprintf("ErrorClass(%d)", int(c))
}

// Classify tells what a batch's failure calls for. Only errors known to be
// caused by data are EventCaused, so that an unknown failure is retried rather
// than an event quarantined for it:
//   - an *EventError anywhere in the chain is Poison;
//   - dedup.ErrRecordedConcurrently, a context's end, network errors and
//     errors pgconn deems safe to retry are Transient;
//   - Postgres errors by SQLSTATE class: 22 (data exception), 23 (integrity
//     constraint violation) and 54 (program limit exceeded, e.g. an index row
//     too large) are EventCaused; 42 (syntax error or access rule violation:
//     undefined table, column, function; insufficient privilege), 28 (invalid
//     authorization), 3D (invalid catalog name), 3F (invalid schema name), 0A
//     (feature not supported) and P0 (raised by PL/pgSQL without a code of its
//     own: a trigger that rejects an event should raise it with
//     ERRCODE = 'check_violation') are Systemic; every other class (08
//     connection, 40 transaction rollback, 53 insufficient resources, 55 object
//     not in prerequisite state, 57 operator intervention, 58 system error, XX
//     internal error, ...) is Transient;
//   - anything else is Transient.
func Classify(err error) ErrorClass {
	var ee *EventError
	if errors.As(err, &ee) {
		return Poison
	}
	if errors.Is(err, dedup.ErrRecordedConcurrently) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return Transient
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if len(pgErr.Code) != 5 {
			return Transient
		}
		switch pgErr.Code[:2] {
		case "22", "23", "54":
			return EventCaused
		case "42", "28", "3D", "3F", "0A", "P0":
			return Systemic
		}
		return Transient
	}
	var netErr net.Error
	if errors.As(err, &netErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return Transient
	}
	return Transient
}
