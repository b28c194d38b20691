package dedup

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/pgarray"
)

// errNotReceived is returned by Statuses when the claim's result never arrived.
var errNotReceived = errors.New("claim event ids: the batch holding the claim was not sent, or failed before the claim's result was read")

// Claimed is a claim queued onto a pgx.Batch by QueueClaim. Its statuses are
// known once the batch has been sent and its results closed.
//
// A Claimed belongs to the goroutine that sends its batch: it is not safe for
// concurrent use.
type Claimed struct {
	items []Item
	// inserted holds the IDs the claim inserted; nil until the result arrived.
	inserted map[uuid.UUID]struct{}
	// done, statuses and err are what Statuses found, kept for later calls.
	done     bool
	statuses []Status
	err      error
}

// QueueClaim queues onto b the statement that records items as processed, so
// that the claim travels in the same pipelined round trip as the statements
// around it, and returns the claim, whose Statuses are known once b has been
// sent and its results closed without error. Queuing nothing for no items, it
// never fails; the statement's errors come out of b's results, wrapped with
// "claim event ids".
//
// b must be sent inside the transaction that applies the new items, so that the
// claim commits or rolls back with them.
func QueueClaim(b *pgx.Batch, items []Item) *Claimed {
	c := &Claimed{items: items}
	if len(items) > 0 {
		b.Queue(claimSQL, c.args()...).Query(c.collect)
	}
	return c
}

// Statuses returns, for each item in the order given to QueueClaim, whether it
// is New, a Duplicate or a Conflict. When an ID occurs twice in the items, the
// first occurrence is the one that can be New. Only when some items were not
// inserted does it run a second statement on q, which must be the transaction
// the batch was sent in, to compare fingerprints; otherwise it does not touch q.
//
// It returns an error when the batch was not sent or failed before the claim's
// result was read, or when the fingerprint query fails; the transaction must
// then be rolled back. Once it has read the claim's result, later calls return
// what the first one did without touching q.
func (c *Claimed) Statuses(ctx context.Context, q Querier) ([]Status, error) {
	if len(c.items) == 0 {
		return nil, nil
	}
	if c.done {
		return c.statuses, c.err
	}
	if c.inserted == nil {
		return nil, errNotReceived
	}
	c.done = true
	c.statuses, c.err = c.decide(ctx, q)
	return c.statuses, c.err
}

// decide works out the statuses from the inserted IDs, using them up, and
// the stored fingerprints of the others.
func (c *Claimed) decide(ctx context.Context, q Querier) ([]Status, error) {
	out := make([]Status, len(c.items))
	var seen []int
	for i, it := range c.items {
		if _, ok := c.inserted[it.ID]; ok {
			delete(c.inserted, it.ID) // a second occurrence of the ID is not new
			out[i] = New
			continue
		}
		seen = append(seen, i)
	}
	if len(seen) == 0 {
		return out, nil
	}
	dupIDs := make([][16]byte, len(seen))
	for j, i := range seen {
		dupIDs[j] = c.items[i].ID
	}
	stored, err := collectFingerprints(ctx, q, dupIDs)
	if err != nil {
		return nil, fmt.Errorf("read fingerprints of processed events: %w", err)
	}
	for _, i := range seen {
		fp, ok := stored[c.items[i].ID]
		switch {
		case !ok:
			return nil, fmt.Errorf("claim event ids: %s neither inserted nor found", c.items[i].ID)
		case fp == c.items[i].Fingerprint:
			out[i] = Duplicate
		default:
			out[i] = Conflict
		}
	}
	return out, nil
}

// args returns the claim statement's arguments: the IDs and fingerprints.
func (c *Claimed) args() []any {
	ids := make(pgarray.UUIDs, len(c.items))
	fps := make(pgarray.Int8s, len(c.items))
	for i, it := range c.items {
		ids[i] = it.ID
		fps[i] = it.Fingerprint
	}
	return []any{ids, fps}
}

// collect reads the IDs the claim statement inserted. It records them only
// when every row was read, so that Statuses never works from part of a result.
func (c *Claimed) collect(rows pgx.Rows) error {
	got := make(map[uuid.UUID]struct{}, len(c.items))
	var id [16]byte
	for rows.Next() {
		if err := rows.Scan(&id); err != nil {
			return fmt.Errorf("claim event ids: %w", err)
		}
		got[id] = struct{}{}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("claim event ids: %w", err)
	}
	c.inserted = got
	return nil
}

// collectFingerprints reads the stored fingerprints of ids.
func collectFingerprints(ctx context.Context, q Querier, ids [][16]byte) (map[uuid.UUID]int64, error) {
	rows, err := q.Query(ctx, fingerprintsSQL, ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	got := make(map[uuid.UUID]int64, len(ids))
	var (
		id [16]byte
		fp int64
	)
	for rows.Next() {
		if err := rows.Scan(&id, &fp); err != nil {
			return nil, err
		}
		got[id] = fp
	}
	return got, rows.Err()
}
