package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/failpoint"
)

// An operator's quarantine decision (re-drive, drop) is a control record in
// the topic, written before it takes effect: the applier carries it out when
// it reaches it, in log order, in the transaction that moves the partition's
// position past it. A rebuild, which replays the topic through the same
// code, then makes the same decision at the same point, so live and rebuilt
// projections agree after any sequence of decisions (DESIGN.md, invariant 11).

// ControlHeader is the record header that marks a control record; its value
// says which kind. A control record is not an event: no Handler sees it.
const ControlHeader = "heed-control"

// DecisionControl is ControlHeader's value on a quarantine decision, whose
// record value is a heed.envelope.v1.QuarantineDecision.
const DecisionControl = "quarantine-decision"

// IsControl reports whether r is a control record: not an event, applied by
// the applier itself (an operator's quarantine decision).
func IsControl(r *kgo.Record) bool { return isControl(r) }

func isControl(r *kgo.Record) bool {
	for _, h := range r.Headers {
		if h.Key == ControlHeader {
			return true
		}
	}
	return false
}

// DecisionRecord is the control record that asks the applier to carry out d
// on the record key of topic: produce it to d's partition (it carries that
// partition, for a producer with a manual partitioner) and wait for the
// partition's applied position to pass it; DecisionResult then reads what
// was done.
func DecisionRecord(topic string, key []byte, d *envelopev1.QuarantineDecision) (*kgo.Record, error) {
	v, err := proto.Marshal(d)
	if err != nil {
		return nil, fmt.Errorf("encode the quarantine decision: %w", err)
	}
	return &kgo.Record{Topic: topic, Partition: d.GetPartition(), Key: key, Value: v,
		Headers: []kgo.RecordHeader{{Key: ControlHeader, Value: []byte(DecisionControl)}}}, nil
}

// Decision is what the applier did when it reached a quarantine decision.
type Decision struct {
	// At is the offset of the control record (set by the caller that wrote it).
	At int64
	// Action is "redrive" or "drop", or "" when the control record could
	// not be read.
	Action string
	// Target is the offset of the record the decision names.
	Target int64
	// Result is what the re-drive or drop did; zero (Dropped and Poison -1)
	// when Note says nothing was done.
	Result RedriveResult
	// Note says why nothing was done (the record was no longer open, the
	// control record was malformed), or is empty.
	Note string
}

// DecisionResult reads what the applier did with the control record at
// partition/offset of topic; found is false until an applier has reached it.
// Errors are the database's, wrapped.
func DecisionResult(ctx context.Context, q Querier, topic string, partition int32, offset int64) (d Decision, found bool, err error) {
	d.Result = RedriveResult{Dropped: -1, Poison: -1}
	err = q.QueryRow(ctx, `SELECT action, target, key, applied, duplicates, conflicts, dropped, poison, reason, parked, note
FROM quarantine_decisions WHERE topic = $1 AND partition = $2 AND "offset" = $3`, topic, partition, offset).Scan(
		&d.Action, &d.Target, &d.Result.Key, &d.Result.Applied, &d.Result.Duplicates, &d.Result.Conflicts,
		&d.Result.Dropped, &d.Result.Poison, &d.Result.Reason, &d.Result.Parked, &d.Note)
	if errors.Is(err, pgx.ErrNoRows) {
		return d, false, nil
	}
	if err != nil {
		return d, false, fmt.Errorf("read the quarantine decision at partition %d offset %d: %w", partition, offset, err)
	}
	return d, true, nil
}

// decide carries out the decision of control record rec in tx, whose caller
// holds the partition's applied position locked, and returns what it did. A
// decision that cannot be carried out (malformed, about another partition, a
// record no longer open) does nothing and says why: it is decided by the
// record and the state alone, the same on every replay. Only a failure of
// the database is an error.
func decide(ctx context.Context, tx pgx.Tx, h Handler, ec emitConfig, topic string, rec *kgo.Record) (Decision, error) {
	out := Decision{Target: -1, Result: RedriveResult{Dropped: -1, Poison: -1}}
	var kind string
	for _, hd := range rec.Headers {
		if hd.Key == ControlHeader {
			kind = string(hd.Value)
		}
	}
	if kind != DecisionControl {
		out.Note = storable(fmt.Sprintf("unknown control record kind %q: ignored", kind))
		return out, nil
	}
	var d envelopev1.QuarantineDecision
	if err := proto.Unmarshal(rec.Value, &d); err != nil {
		out.Note = "malformed quarantine decision: " + ProtoError(err) + ": ignored"
		return out, nil
	}
	out.Target = d.GetOffset()
	note := ""
	switch d.GetAction() {
	case envelopev1.QuarantineAction_QUARANTINE_ACTION_REDRIVE:
		out.Action = "redrive"
	case envelopev1.QuarantineAction_QUARANTINE_ACTION_DROP:
		out.Action = "drop"
		if note = d.GetReason(); note == "" {
			note = "dropped by an operator"
		}
	default:
		out.Note = fmt.Sprintf("quarantine decision with unknown action %d: ignored", d.GetAction())
		return out, nil
	}
	if d.GetPartition() != rec.Partition {
		out.Note = fmt.Sprintf("the decision names partition %d but is in partition %d: ignored", d.GetPartition(), rec.Partition)
		return out, nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return out, fmt.Errorf("savepoint: %w", err)
	}
	res, err := resolveTx(ctx, sp, h, ec, topic, rec.Partition, d.GetOffset(), storable(note))
	if errors.Is(err, ErrNotQuarantined) {
		_ = sp.Rollback(ctx) // nothing was written before the record was found missing
		out.Note = fmt.Sprintf("no open quarantined or parked record at offset %d (re-driven or dropped before, or never quarantined): nothing to do", d.GetOffset())
		return out, nil
	}
	if err != nil {
		_ = sp.Rollback(ctx) // the batch's transaction rolls back either way
		return out, err
	}
	if err := sp.Commit(ctx); err != nil {
		return out, fmt.Errorf("release savepoint: %w", err)
	}
	out.Result = res
	return out, nil
}

// applyControl moves the partition's position past the control record rec,
// in one transaction that carries out its decision and records what was done.
// Errors as applyOnce's: errStale when another member moved the position.
func (w *partition) applyControl(ctx context.Context, rec *kgo.Record) error {
	a := w.a
	next := rec.Offset + 1
	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire database connection: %w", err)
	}
	defer release(conn)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	// A control record is not an event: its time moves no dedup window.
	tag, err := tx.Exec(ctx, casSQL, next, a.cfg.Topic, w.p, w.next, (*time.Time)(nil))
	if err != nil {
		return fmt.Errorf("move applied position: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errStale
	}
	var d Decision
	if reason, ok := w.poison[rec.Offset]; ok {
		// Carrying it out failed alone, twice, with an error a record may
		// cause (see applyBatch): record that, rather than stall.
		d = Decision{Target: -1, Result: RedriveResult{Dropped: -1, Poison: -1}, Note: "could not be carried out: " + reason}
	} else if d, err = decide(ctx, tx, a.handler, emitConfig{ids: a.cfg.IDs, maxBytes: a.cfg.MaxEmitBytes}, a.cfg.Topic, rec); err != nil {
		return fmt.Errorf("carry out the quarantine decision at offset %d: %w", rec.Offset, err)
	}
	r := d.Result
	_, err = tx.Exec(ctx, `INSERT INTO quarantine_decisions (topic, partition, "offset", action, target, key, applied, duplicates, conflicts, dropped, poison, reason, parked, note)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT (topic, partition, "offset") DO NOTHING`,
		a.cfg.Topic, w.p, rec.Offset, d.Action, d.Target, nonNil(r.Key), r.Applied, r.Duplicates, r.Conflicts, r.Dropped, r.Poison, r.Reason, r.Parked, d.Note)
	if err != nil {
		return fmt.Errorf("record the quarantine decision at offset %d: %w", rec.Offset, err)
	}
	failpoint.Hit("apply/before-commit")
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	w.next = next
	delete(w.poison, rec.Offset)
	w.suspect = -1
	if o := a.cfg.Observer; o != nil {
		o.BatchApplied(w.p, []*kgo.Record{rec}, 0, BatchStats{})
	}
	if d.Note != "" {
		a.log.Warn("quarantine decision not carried out", "partition", w.p, "offset", rec.Offset, "note", d.Note)
	} else {
		a.log.Info("quarantine decision carried out", "partition", w.p, "offset", rec.Offset, "action", d.Action, "target", d.Target,
			"applied", r.Applied, "duplicates", r.Duplicates, "conflicts", r.Conflicts, "still_poison", r.Poison)
	}
	return nil
}
