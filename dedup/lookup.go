package dedup

import (
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/heed-dev/heed/pgarray"
)

// recordSQL records new event IDs. A plain INSERT: the lookup before it found
// none of them, and a concurrent transaction that recorded one since makes it
// fail on the primary key instead of skipping the row.
const recordSQL = `INSERT INTO processed_events (event_id, fingerprint)
SELECT * FROM unnest($1::uuid[], $2::int8[])`

// errNotReceived is returned by Lookup's methods when the lookup's result never
// arrived.
var errNotReceived = errors.New("look up event ids: the batch holding the lookup was not sent, or failed before the lookup's result was read")

// ErrRecordedConcurrently is in the error of a batch holding QueueRecord's
// INSERT when another transaction recorded one of the IDs since the lookup: roll
// back and retry at once; the retry's lookup finds the ID processed.
var ErrRecordedConcurrently = errors.New("an event id was recorded by a concurrent transaction since the lookup")

// Lookup is a claim in two steps, cheaper for Postgres than Claim's
// INSERT ... ON CONFLICT DO NOTHING (a speculative insertion per row): the
// batch's IDs are looked up with their stored fingerprints (QueueLookup), which
// tells every status without another round trip, and the new ones are then
// recorded with a plain INSERT (QueueRecord), typically in the round trip that
// commits. Between the two, another transaction may record one of the IDs: the
// INSERT then fails on the primary key, the transaction must roll back, and a
// retry's lookup finds the ID. The primary key stays the arbiter, so an ID is
// never recorded twice and never reported New to two committed transactions.
//
// A Lookup belongs to the goroutine that sends its batches: it is not safe for
// concurrent use.
type Lookup struct {
	items []Item
	// stored holds the fingerprints found for the items' IDs; nil until the
	// lookup's result arrived.
	stored map[uuid.UUID]int64
	// statuses is what Statuses worked out, kept for QueueRecord.
	statuses []Status
	// excluded marks the items taken out with Exclude.
	excluded map[int]bool
}

// Exclude takes item i (in the order given to QueueLookup) out of the claim:
// Statuses reports it Excluded, later occurrences of its ID do not compare
// with it, and QueueRecord does not record it. Call it before Statuses; a
// record held back (parked) is excluded so that it can be claimed when it is
// applied later.
func (l *Lookup) Exclude(i int) {
	if l.excluded == nil {
		l.excluded = make(map[int]bool)
	}
	l.excluded[i] = true
}

// QueueLookup queues onto b the statement that reads which of items' IDs were
// processed before, with their fingerprints, and returns the lookup, whose
// Statuses are known once b has been sent and its results closed without
// error. It queues nothing for no items. Its errors come out of b's results,
// wrapped with "look up event ids".
//
// b must be sent inside the transaction that applies the new items and
// records them with QueueRecord.
func QueueLookup(b *pgx.Batch, items []Item) *Lookup {
	l := &Lookup{items: items}
	if len(items) > 0 {
		ids := make(pgarray.UUIDs, len(items))
		for i, it := range items {
			ids[i] = it.ID
		}
		b.Queue(fingerprintsSQL, ids).Query(l.collect)
	}
	return l
}

// Statuses returns, for each item in the order given to QueueLookup, whether it
// is New, a Duplicate or a Conflict, without touching the database. When an ID
// occurs twice in the items, the first occurrence is the one that can be New,
// and later ones compare with its fingerprint. It returns an error when the
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
		fp, ok := l.stored[it.ID]
		switch {
		case !ok:
			out[i] = New
			l.stored[it.ID] = it.Fingerprint // a later occurrence compares with this one
		case fp == it.Fingerprint:
			out[i] = Duplicate
		default:
			out[i] = Conflict
		}
	}
	l.statuses = out
	return out, nil
}

// QueueRecord queues onto b the INSERT that records the New items as processed.
// b must be sent in the transaction the lookup was, before it commits; the
// INSERT's errors come out of b's results, wrapped with "record event ids"
// (and ErrRecordedConcurrently when a concurrent transaction got there first). It
// queues nothing when no item is New, and fails when Statuses has not
// succeeded.
func (l *Lookup) QueueRecord(b *pgx.Batch) error {
	if len(l.items) == 0 {
		return nil
	}
	st, err := l.Statuses()
	if err != nil {
		return err
	}
	ids := make(pgarray.UUIDs, 0, len(l.items))
	fps := make(pgarray.Int8s, 0, len(l.items))
	for i, it := range l.items {
		if st[i] == New {
			ids = append(ids, it.ID)
			fps = append(fps, it.Fingerprint)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	b.Queue(recordSQL, ids, fps).Fn = func(br pgx.BatchResults) error {
		_, err := br.Exec()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.TableName == "processed_events" { // unique_violation
			return fmt.Errorf("record event ids: %w (%w)", ErrRecordedConcurrently, err)
		}
		if err != nil {
			return fmt.Errorf("record event ids: %w", err)
		}
		return nil
	}
	return nil
}

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
