package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/failpoint"
)

// A batch transaction runs on one connection taken from the pool, as pipelined
// round trips driven by hand: begin sends the first, which opens it, commit
// the last, which ends with COMMIT. Whatever happens in between, release ends
// it: a connection goes back to the pool only outside a transaction.
//
// Cancelling the context (the applier's hard stop) aborts the round trip in
// flight by closing the connection. Once the last round trip is on its way the
// server may still commit it; that is the same as a commit whose answer was
// lost, which the applied position makes safe: the next owner resumes from
// what the database holds.

// casSQL moves a partition's applied position by compare-and-set. A retired
// projection's positions (heed rebuild --swap) never match.
// It moves the partition's record time with it ($5: the batch's latest
// record timestamp; greatest ignores a NULL), which is then the effective
// time of the batch's last record (see recordTimes).
const casSQL = `UPDATE applied_positions SET next_offset = $1, record_time = greatest(record_time, $5) WHERE topic = $2 AND partition = $3 AND next_offset = $4 AND retired_at IS NULL`

// recordTimeSQL reads a partition's record time, before the compare-and-set:
// when that succeeds, nothing moved the row in between, so the time read is
// the one that goes with the position.
const recordTimeSQL = `SELECT record_time FROM applied_positions WHERE topic = $1 AND partition = $2`

// rollbackTimeout bounds the ROLLBACK of a failed batch; a connection that
// cannot roll back within it is closed instead.
const rollbackTimeout = 5 * time.Second

// errCommitRolledBack means COMMIT answered ROLLBACK: the transaction had
// failed without the failure being reported first.
var errCommitRolledBack = errors.New("commit rolled the transaction back")

// txn is a batch transaction opened by begin.
type txn struct {
	conn *pgxpool.Conn
	// tx is the transaction as a pgx.Tx, for a plain Handler's Apply.
	tx pgx.Tx
	// lookup is the batch's dedup lookup: sent in begin; commit records the
	// new events with their results.
	lookup *dedup.Lookup
	// loaded is what a BatchHandler's Load read; nil for a plain Handler or a
	// batch with no decodable event.
	loaded Loaded
	// parked holds the partition's parked keys by hash (see parkKey), read
	// in begin.
	parked map[string]bool
	// emitted is how many outbox rows commit wrote.
	emitted int
}

// parkedKeysSQL reads a partition's parked keys: those with a poison record
// that no operator has re-driven or dropped yet, by hash: a key may be a MiB
// long. There are few, often none.
const parkedKeysSQL = `SELECT key_hash FROM parked_keys WHERE topic = $1 AND partition = $2`

// begin sends the batch's first round trip on conn: BEGIN, the compare-and-set
// of the applied position from w.next to next, the partition's parked keys,
// the lookup of items' IDs (unless skipLookup) and, for a BatchHandler, the
// reads Load queues for events. The parked keys are read after the compare-and-set has locked the
// position row, which an operator's re-drive locks too, so they are current.
// It returns errStale when the position moved, and any other failure
// wrapped; release rolls back.
//
// newest is the batch's latest record timestamp, which moves the partition's
// record time. When the worker does not know the partition's record time
// (after an assignment or a resync), begin reads it into w.recTime; items'
// Times may be set after begin returns, before the lookup's Statuses.
func (w *partition) begin(ctx context.Context, conn *pgxpool.Conn, next int64, newest time.Time, items []dedup.Item, events []Event, skipLookup bool) (*txn, error) {
	a := w.a
	t := &txn{conn: conn}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	// The compare-and-set comes first: it locks the position row, so a
	// competing member of the same partition waits here, then finds the
	// position moved (and rolls back what it queued after it).
	var recTime *time.Time
	if !w.timed {
		b.Queue(recordTimeSQL, a.cfg.Topic, w.p) // read by hand, after BEGIN's
	}
	var at *time.Time
	if !newest.IsZero() {
		at = &newest
	}
	b.Queue(casSQL, next, a.cfg.Topic, w.p, w.next, at)
	b.Queue(parkedKeysSQL, a.cfg.Topic, w.p).Query(func(rows pgx.Rows) error {
		defer rows.Close()
		var key []byte
		for rows.Next() {
			if err := rows.Scan(&key); err != nil {
				return fmt.Errorf("read parked keys: %w", err)
			}
			if t.parked == nil {
				t.parked = make(map[string]bool)
			}
			t.parked[string(key)] = true
		}
		return rows.Err()
	})
	if skipLookup {
		t.lookup = dedup.SkipLookup(items, a.cfg.DedupWindow)
	} else {
		t.lookup = dedup.QueueLookup(b, items, a.cfg.DedupWindow)
	}
	if bh, ok := a.handler.(BatchHandler); ok && len(events) > 0 {
		t.loaded = bh.Load(b, events)
	}
	br := conn.SendBatch(ctx, b)
	t.tx = br.Tx()
	if _, err := br.Exec(); err != nil {
		br.Close() //nolint:errcheck // reports the error just returned
		return nil, fmt.Errorf("begin: %w", err)
	}
	if !w.timed {
		if err := br.QueryRow().Scan(&recTime); err != nil {
			br.Close() //nolint:errcheck // reports the error just returned
			return nil, fmt.Errorf("read the partition's record time: %w", err)
		}
	}
	tag, err := br.Exec()
	if err != nil {
		br.Close() //nolint:errcheck // reports the error just returned
		return nil, fmt.Errorf("move applied position: %w", err)
	}
	if tag.RowsAffected() == 0 {
		br.Close() //nolint:errcheck // the transaction is rolled back whatever the rest did
		return nil, errStale
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("claim and read the batch's state: %w", err)
	}
	if !w.timed {
		w.recTime, w.timed = time.Time{}, true
		if recTime != nil {
			w.recTime = *recTime
		}
	}
	return t, nil
}

// commit applies out.fresh (a BatchHandler queues its writes; a plain
// Handler's Apply runs with the transaction), records the new events with
// their results (by COPY when there are copyMinRows or more), then sends the
// last round trip: the handler's writes, the INSERT of fewer new events, the
// outbox rows of their follow-ups, the quarantine and parking of out.bad
// and COMMIT. Failures are
// returned wrapped; release rolls back.
func (w *partition) commit(ctx context.Context, t *txn, out sorted) error {
	a := w.a
	b := &pgx.Batch{}
	if fresh := out.fresh; len(fresh) > 0 {
		var (
			results []Result
			err     error
		)
		if t.loaded != nil {
			results, err = t.loaded.Queue(fresh, b)
		} else if results, err = a.handler.Apply(ctx, t.tx, fresh); err == nil {
			err = stillOpen(t.conn)
		}
		if err != nil {
			return fmt.Errorf("apply events: %w", err)
		}
		rows, err := processedRows(out.items, results)
		if err != nil {
			return err
		}
		emits, err := outboxRows(a.cfg.IDs, a.cfg.MaxEmitBytes, fresh, results)
		if err != nil {
			return err
		}
		queueOutbox(b, a.cfg.Topic, emits)
		t.emitted = len(emits)
		if len(out.superseded) > 0 {
			kept := rows[:0]
			for i, r := range rows {
				if !out.superseded[i] {
					kept = append(kept, r)
				}
			}
			rows = kept
		}
		// Rows that expired (see DedupWindow) make way for the new ones.
		if err := t.lookup.Replace(ctx, t.conn); err != nil {
			return err
		}
		if len(rows) < copyMinRows {
			dedup.QueueRecord(b, rows)
		} else if err := dedup.Record(ctx, t.conn, rows); err != nil {
			return err
		}
	}
	queueQuarantine(b, a.cfg.Topic, w.p, out.bad, out.blocked)
	b.Queue("COMMIT").Exec(checkCommitted)
	failpoint.Hit("apply/before-commit")
	if t.emitted > 0 {
		failpoint.Hit("apply/before-commit-emits")
	}
	if err := t.conn.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write and commit: %w", err)
	}
	return nil
}

// copyMinRows is the fewest new events a batch records by COPY; fewer go as
// one INSERT in the round trip that commits. COPY writes rows for less, but
// costs round trips of its own (the table's column types, then the copy),
// which small batches, the usual ones at moderate load, pay for every few
// events (docs/BENCHMARKS.md, issue 18).
const copyMinRows = 500

// processedRows pairs the new events' items with the results the handler
// returned for the events (nil: all applied, no data). The results' emits
// are outboxRows'.
func processedRows(items []dedup.Item, results []Result) ([]dedup.Row, error) {
	if results != nil && len(results) != len(items) {
		return nil, fmt.Errorf("apply events: the handler returned %d results for %d events", len(results), len(items))
	}
	rows := make([]dedup.Row, len(items))
	for i, it := range items {
		rows[i] = dedup.Row{Item: it, Outcome: dedup.Applied}
		if results != nil {
			r := results[i]
			if r.Rejected {
				rows[i].Outcome = dedup.Rejected
			}
			rows[i].Reason, rows[i].Result = storable(r.Reason), r.Data
		}
	}
	return rows, nil
}

// stillOpen reports an error unless conn is inside a transaction that has not
// failed: what a plain Handler's Apply must leave when it returns no error.
func stillOpen(conn *pgxpool.Conn) error {
	switch conn.Conn().PgConn().TxStatus() {
	case 'T':
		return nil
	case 'E':
		return errors.New("a statement failed inside Apply, which returned no error")
	default:
		return errors.New("the transaction ended inside Apply")
	}
}

// checkCommitted is COMMIT's callback. Postgres answers a COMMIT of a failed
// transaction with the tag ROLLBACK, not an error.
func checkCommitted(tag pgconn.CommandTag) error {
	if tag.String() != "COMMIT" {
		return fmt.Errorf("%w (command tag %q)", errCommitRolledBack, tag.String())
	}
	return nil
}

// release ends whatever transaction conn still has open and returns it to the
// pool. A transaction still open (a failure after BEGIN, before or during
// COMMIT) is rolled back, ignoring the error; a connection that is closed, busy
// or still not idle after that is closed and never goes back to the pool.
func release(conn *pgxpool.Conn) {
	c := conn.Conn()
	if !c.IsClosed() && !c.PgConn().IsBusy() && c.PgConn().TxStatus() != 'I' {
		ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
		_, _ = c.Exec(ctx, "ROLLBACK") // a failure leaves the transaction open: closed below
		cancel()
	}
	if c.IsClosed() || c.PgConn().IsBusy() || c.PgConn().TxStatus() != 'I' {
		ctx, cancel := context.WithTimeout(context.Background(), rollbackTimeout)
		_ = conn.Hijack().Close(ctx) // closing ends the session, and its transaction with it
		cancel()
		return
	}
	conn.Release()
}
