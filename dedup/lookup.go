package dedup

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/heed-dev/heed/pgarray"
)

// errNotReceived is returned by Lookup's methods when the lookup's result never
// arrived.
var errNotReceived = errors.New("look up event ids: the batch holding the lookup was not sent, or failed before the lookup's result was read")

// ErrRecordedConcurrently is in Record's error when another transaction recorded one of the IDs since the lookup: roll
// back and retry at once; the retry's lookup finds the ID processed.
var ErrRecordedConcurrently = errors.New("an event id was recorded by a concurrent transaction since the lookup")

// Lookup is a claim in two steps, cheaper for Postgres than Claim's
// INSERT ... ON CONFLICT DO NOTHING (a speculative insertion per row): the
// batch's IDs are looked up with their stored fingerprints (QueueLookup), which
// tells every status without another round trip, and the new ones are then
// recorded with their outcomes by COPY (Record), before the transaction
// commits. Between the two, another transaction may record one of the events:
// the COPY then fails on the primary key, the transaction must roll back, and
// a retry's lookup finds the event. The primary key stays the arbiter, so an
// event is never recorded twice and never reported New to two committed
// transactions.
//
// A Lookup belongs to the goroutine that sends its batches: it is not safe for
// concurrent use.
type Lookup struct {
	items []Item
	// window is the dedup window (see Replace); 0: none.
	window time.Duration
	// keys holds the items' key hashes, in order.
	keys []int64
	// stored holds the fingerprints found for the items' IDs; nil until the
	// lookup's result arrived.
	stored stored
	// statuses is what Statuses worked out, kept for QueueRecord.
	statuses []Status
	// excluded marks the items taken out with Exclude.
	excluded map[int]bool
	// expiredRows are the rows of the table that New items replace (see
	// Replace); superseded marks New items whose event is New again later
	// in the lookup (see Superseded).
	expiredRows []ref
	superseded  map[int]bool
}

// Exclude takes item i (in the order given to QueueLookup) out of the claim:
// Statuses reports it Excluded, later occurrences of its event do not compare
// with it, and the caller does not record it. Call it before Statuses; a
// record held back (parked) is excluded so that it can be claimed when it is
// applied later.
func (l *Lookup) Exclude(i int) {
	if l.excluded == nil {
		l.excluded = make(map[int]bool)
	}
	l.excluded[i] = true
}

// QueueLookup queues onto b the statement that reads which of items' IDs were
// processed before, with their fingerprints and times, and returns the lookup,
// deciding within window (0: none; see Replace), whose
// Statuses are known once b has been sent and its results closed without
// error. It queues nothing for no items. Its errors come out of b's results,
// wrapped with "look up event ids".
//
// b must be sent inside the transaction that applies the new items and
// records them with Record.
func QueueLookup(b *pgx.Batch, items []Item, window time.Duration) *Lookup {
	l := &Lookup{items: items, window: window}
	if len(items) > 0 {
		ids := make(pgarray.UUIDs, len(items))
		l.keys = make([]int64, len(items))
		for i, it := range items {
			ids[i], l.keys[i] = it.ID, it.hash()
		}
		b.Queue(fingerprintsSQL, ids).Query(l.collect)
	}
	return l
}

// Item returns item i, in the order given to QueueLookup or SkipLookup.
func (l *Lookup) Item(i int) Item { return l.items[i] }

// SkipLookup is a Lookup that does not ask the database: every item is New
// unless an earlier item of the same batch holds its event (then Duplicate or
// Conflict, as Statuses says). It is for a batch that most likely holds no
// event recorded before: Record then writes every New item, and an event
// recorded before makes the COPY fail on the primary key
// (ErrRecordedConcurrently), so that nothing is applied twice; the batch must
// then be rolled back and retried with QueueLookup. It is only sound while
// the table holds no row recorded before rows carried keys (see
// HasKeylessRows), which a lookup matches and the primary key does not.
func SkipLookup(items []Item, window time.Duration) *Lookup {
	l := &Lookup{items: items, window: window, keys: make([]int64, len(items)), stored: make(stored, len(items))}
	for i, it := range items {
		l.keys[i] = it.hash()
	}
	return l
}

// HasKeylessRows reports whether the table holds rows recorded before rows
// carried keys (key_hash 0), which only a lookup recognises (see SkipLookup).
func HasKeylessRows(ctx context.Context, q Querier) (bool, error) {
	rows, err := q.Query(ctx, `SELECT EXISTS (SELECT 1 FROM processed_events WHERE key_hash = 0)`)
	if err != nil {
		return false, fmt.Errorf("look for processed events without a key: %w", err)
	}
	found, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[bool])
	if err != nil {
		return false, fmt.Errorf("look for processed events without a key: %w", err)
	}
	return found, nil
}

// Statuses returns, for each item in the order given to QueueLookup, whether it
// is New, a Duplicate or a Conflict, without touching the database: a
// Duplicate or a Conflict (by fingerprint) of a row within the window before
// it, New otherwise; a New item whose row expired replaces it (Replace). When
// an event (an ID under one key) occurs twice in the items, a later
// occurrence compares with the earlier one as with a row: within the window
// it is a Duplicate or a Conflict, further it is New again and the earlier
// one is Superseded. It returns an error when the
// batch was not sent or failed before the lookup's result was read; the
// transaction must then be rolled back.
func (l *Lookup) Statuses() ([]Status, error) {
	if len(l.items) == 0 {
		return nil, nil
	}
	if l.statuses != nil {
		return l.statuses, nil
	}
	if l.stored == nil {
		return nil, errNotReceived
	}
	out := make([]Status, len(l.items))
	for i, it := range l.items {
		if l.excluded[i] {
			out[i] = Excluded
			continue
		}
		e, ok := l.stored.find(it.ID, l.keys[i])
		if ok && e.expired(l.window, it.Time) {
			if e.batch > 0 {
				if l.superseded == nil {
					l.superseded = make(map[int]bool)
				}
				l.superseded[e.batch-1] = true
			} else {
				l.expiredRows = append(l.expiredRows, ref{it.ID, l.keys[i]})
			}
			ok = false
		}
		switch {
		case !ok:
			out[i] = New
			l.stored[ref{it.ID, l.keys[i]}] = itemEntry(&l.items[i], i+1) // a later occurrence compares with this one
		case e.fp == it.Fingerprint:
			out[i] = Duplicate
		default:
			out[i] = Conflict
		}
	}
	l.statuses = out
	return out, nil
}

// Copier is what Record needs: the batch transaction, or its connection.
type Copier interface {
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error)
}

// Record writes rows, the New events of a lookup with their outcomes, by COPY,
// in the transaction that looked them up, before it commits. COPY is the
// cheapest way into the table (see docs/BENCHMARKS.md); a concurrent
// transaction that recorded one of the events since the lookup makes it fail
// on the primary key, with ErrRecordedConcurrently in the error. Other errors
// are wrapped with "record event ids". It writes nothing for no rows.
func Record(ctx context.Context, c Copier, rows []Row) error {
	if len(rows) == 0 {
		return nil
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{"processed_events"}, copyColumns, copyRows(rows))
	if err != nil {
		return recordError(err)
	}
	if n != int64(len(rows)) {
		return fmt.Errorf("record event ids: copied %d rows of %d", n, len(rows))
	}
	return nil
}

// recordSQL is QueueRecord's INSERT: a plain one, so that an event recorded
// since the lookup fails it on the primary key instead of being skipped.
const recordSQL = `INSERT INTO processed_events (event_id, key_hash, aggregate, fingerprint, status, reason, result, event_time)
SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::int2[], $6::text[], $7::bytea[], $8::timestamptz[])`

// QueueRecord queues onto b the INSERT of rows, as Record writes them: for a
// few rows, one statement in a pipelined batch costs less than COPY's own
// round trips. Its errors come out of b's results, wrapped as Record's are.
// It queues nothing for no rows.
func QueueRecord(b *pgx.Batch, rows []Row) {
	if len(rows) == 0 {
		return
	}
	var (
		ids     = make(pgarray.UUIDs, len(rows))
		keys    = make(pgarray.Int8s, len(rows))
		aggs    = make(pgarray.Texts, len(rows))
		fps     = make(pgarray.Int8s, len(rows))
		status  = make(pgarray.Int2s, len(rows))
		reasons = make(pgarray.Texts, len(rows))
		results = make([][]byte, len(rows))
		times   = make([]*time.Time, len(rows))
	)
	for i := range rows {
		r := &rows[i]
		ids[i], keys[i], aggs[i], fps[i] = r.ID, r.hash(), r.Key, r.Fingerprint
		status[i], reasons[i], results[i] = int16(r.Outcome), r.Reason, r.Result
		if !r.Time.IsZero() {
			times[i] = &r.Time
		}
	}
	b.Queue(recordSQL, ids, keys, aggs, fps, status, reasons, results, times).Fn = func(br pgx.BatchResults) error {
		_, err := br.Exec()
		return recordError(err)
	}
}

// recordError wraps an error of Record or QueueRecord.
func recordError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.TableName == "processed_events" { // unique_violation
		return fmt.Errorf("record event ids: %w (%w)", ErrRecordedConcurrently, err)
	}
	if err != nil {
		return fmt.Errorf("record event ids: %w", err)
	}
	return nil
}

var copyColumns = []string{"event_id", "key_hash", "aggregate", "fingerprint", "status", "reason", "result", "event_time"}

// copyRows is a pgx.CopyFromSource over rows, without a slice of values per
// row.
func copyRows(rows []Row) pgx.CopyFromSource {
	return &rowSource{rows: rows, i: -1, vals: make([]any, len(copyColumns))}
}

type rowSource struct {
	rows []Row
	i    int
	vals []any
}

func (s *rowSource) Next() bool {
	s.i++
	return s.i < len(s.rows)
}

func (s *rowSource) Values() ([]any, error) {
	r := &s.rows[s.i]
	s.vals[0], s.vals[1], s.vals[2], s.vals[3] = [16]byte(r.ID), r.hash(), r.Key, r.Fingerprint
	s.vals[4], s.vals[5], s.vals[6], s.vals[7] = int16(r.Outcome), r.Reason, r.Result, nil
	if !r.Time.IsZero() {
		s.vals[7] = r.Time
	}
	return s.vals, nil
}

func (s *rowSource) Err() error { return nil }

// collect reads the stored fingerprints. It records them only when every row
// was read, so that Statuses never works from part of a result.
func (l *Lookup) collect(rows pgx.Rows) error {
	got, err := scanFingerprints(rows, len(l.items))
	if err != nil {
		return fmt.Errorf("look up event ids: %w", err)
	}
	l.stored = got
	return nil
}
