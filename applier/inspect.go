package applier

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// QuarantinedRecord is a record of the quarantine: a poison record, a
// conflict, or a record parked behind a poison one.
type QuarantinedRecord struct {
	Topic     string
	Partition int32
	Offset    int64
	// Kind is poison, conflict or parked.
	Kind string
	// State is open, redriven or dropped.
	State  string
	Reason string
	// EventID is the envelope's event ID, when it had a valid one.
	EventID *uuid.UUID
	// Key and Value are the record's raw bytes, whole.
	Key, Value []byte
	// Headers are the record's headers, whole (none for records stored
	// before headers were).
	Headers []kgo.RecordHeader
}

// Querier is what the quarantine's readers need: a pool, a connection or a
// transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// QuarantineFilter selects records of the quarantine. Zero fields select all.
type QuarantineFilter struct {
	// Partition, if not nil, selects one partition.
	Partition *int32
	// Key, if not nil, selects one key.
	Key []byte
	// All includes records no longer open (re-driven, dropped).
	All bool
	// Limit bounds how many records are returned (0: 1000).
	Limit int
}

// ListQuarantine returns the quarantine's records of topic that f selects, by
// partition and offset. Errors are the database's, wrapped.
func ListQuarantine(ctx context.Context, q Querier, topic string, f QuarantineFilter) ([]QuarantinedRecord, error) {
	if f.Limit <= 0 {
		f.Limit = 1000
	}
	rows, err := q.Query(ctx, `SELECT topic, partition, "offset", kind, state, reason, event_id, key, value, headers FROM quarantine
WHERE topic = $1 AND ($2::int IS NULL OR partition = $2) AND ($3::bytea IS NULL OR key_hash = sha256($3) AND key = $3) AND ($4 OR state = 'open')
ORDER BY partition, "offset" LIMIT $5`, topic, f.Partition, f.Key, f.All, f.Limit)
	if err != nil {
		return nil, fmt.Errorf("read quarantine: %w", err)
	}
	out, err := pgx.CollectRows(rows, scanQuarantined)
	if err != nil {
		return nil, fmt.Errorf("read quarantine: %w", err)
	}
	return out, nil
}

// GetQuarantined returns the quarantine's record at partition/offset of
// topic, or an error wrapping pgx.ErrNoRows when there is none.
func GetQuarantined(ctx context.Context, q Querier, topic string, partition int32, offset int64) (QuarantinedRecord, error) {
	rows, err := q.Query(ctx, `SELECT topic, partition, "offset", kind, state, reason, event_id, key, value, headers FROM quarantine
WHERE topic = $1 AND partition = $2 AND "offset" = $3`, topic, partition, offset)
	if err != nil {
		return QuarantinedRecord{}, fmt.Errorf("read quarantine: %w", err)
	}
	r, err := pgx.CollectExactlyOneRow(rows, scanQuarantined)
	if err != nil {
		return QuarantinedRecord{}, fmt.Errorf("read quarantine at partition %d offset %d: %w", partition, offset, err)
	}
	return r, nil
}

func scanQuarantined(row pgx.CollectableRow) (QuarantinedRecord, error) {
	var (
		r       QuarantinedRecord
		id      *[16]byte
		headers []byte
	)
	if err := row.Scan(&r.Topic, &r.Partition, &r.Offset, &r.Kind, &r.State, &r.Reason, &id, &r.Key, &r.Value, &headers); err != nil {
		return r, err
	}
	hs, err := decodeHeaders(headers)
	if err != nil {
		return r, fmt.Errorf("headers of offset %d: %w", r.Offset, err)
	}
	r.Headers = hs
	if id != nil {
		u := uuid.UUID(*id)
		r.EventID = &u
	}
	return r, nil
}

// Outcome is what became of a command whose event is in the quarantine.
type Outcome int

const (
	// NotQuarantined means the quarantine holds nothing for the event (or
	// only a conflict with it, which leaves the first command's outcome).
	NotQuarantined Outcome = iota
	// OutcomeQuarantined: the event cannot apply; its key is parked.
	OutcomeQuarantined
	// OutcomeParked: the event waits behind a quarantined one of its key.
	OutcomeParked
	// OutcomeDropped: an operator dropped the event; it never applies.
	OutcomeDropped
)

// QuarantineOutcome tells what the quarantine says of the event eventID of
// topic with record key key (any key when key is ""), with the reason: what a
// command's status query reads when the processed-event table has no result
// for it. Open records come before closed ones, earlier before later ones.
// Errors are the database's, wrapped.
func QuarantineOutcome(ctx context.Context, q Querier, topic string, eventID uuid.UUID, key string) (Outcome, string, error) {
	var kind, state, reason string
	var keyArg []byte
	if key != "" {
		keyArg = []byte(key)
	}
	err := q.QueryRow(ctx, `SELECT kind, state, reason FROM quarantine WHERE event_id = $1 AND topic = $2 AND kind <> 'conflict'
AND ($3::bytea IS NULL OR key_hash = sha256($3) AND key = $3)
ORDER BY state = 'open' DESC, "offset" LIMIT 1`, [16]byte(eventID), topic, keyArg).Scan(&kind, &state, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return NotQuarantined, "", nil
	}
	if err != nil {
		return NotQuarantined, "", fmt.Errorf("read quarantine: %w", err)
	}
	switch {
	case state == "dropped":
		return OutcomeDropped, reason, nil
	case state != "open":
		return NotQuarantined, "", nil
	case kind == kindPoison:
		return OutcomeQuarantined, reason, nil
	default:
		return OutcomeParked, reason, nil
	}
}
