// Package dedup keeps the processed-event table: the record of every event ID
// whose effect is in the database. Claiming a batch of IDs inside the transaction
// that applies them is what makes a redelivered event change nothing.
package dedup

import (
	"context"
	"embed"
	"fmt"
	"io/fs"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/pgarray"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations that create the processed-event table.
var Migrations = mustSub(migrations, "migrations")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// Status is what a claim found for one event ID.
type Status uint8

const (
	// New means the ID was not processed before: apply the event.
	New Status = iota + 1
	// Duplicate means the ID was processed before with the same content: skip it.
	Duplicate
	// Conflict means the ID was processed before with different content: the
	// client reused a request ID for another command. Skip it and report it.
	Conflict
	// Excluded means the caller took the item out of the claim (Lookup.Exclude):
	// it is neither looked at nor recorded.
	Excluded
)

func (s Status) String() string {
	switch s {
	case New:
		return "new"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	case Excluded:
		return "excluded"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Item is one event to claim: its ID and a fingerprint of its content.
type Item struct {
	ID          uuid.UUID
	Fingerprint int64
}

// Querier is what Claim needs: a pgx.Tx (or the connection of a transaction
// begun by hand), so that the claim commits or rolls back with the state
// change it guards.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const claimSQL = `INSERT INTO processed_events (event_id, fingerprint)
SELECT * FROM unnest($1::uuid[], $2::int8[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id`

const fingerprintsSQL = `SELECT event_id, fingerprint FROM processed_events WHERE event_id = ANY($1::uuid[])`

// Claim records items as processed in one statement and returns, for each item in
// order, whether it is New, a Duplicate or a Conflict. When an ID occurs twice in
// items, the first occurrence is the one that can be New. Only when some items are
// not new does it run a second statement to compare fingerprints. A transaction
// claiming an ID that a concurrent one claimed waits for it and then finds the
// ID processed; no retry is needed. QueueLookup and QueueRecord do the same work
// pipelined with other statements and cheaper for Postgres, but a concurrent
// claim of the same ID fails them.
//
// q must be the transaction that applies the new items: if it rolls back, the
// claim rolls back too. Errors are wrapped with what failed; the transaction
// must then be rolled back. Claim is as safe for concurrent use as q is.
func Claim(ctx context.Context, q Querier, items []Item) ([]Status, error) {
	if len(items) == 0 {
		return nil, nil
	}
	ids := make(pgarray.UUIDs, len(items))
	fps := make(pgarray.Int8s, len(items))
	for i, it := range items {
		ids[i], fps[i] = it.ID, it.Fingerprint
	}
	rows, err := q.Query(ctx, claimSQL, ids, fps)
	if err != nil {
		return nil, fmt.Errorf("claim event ids: %w", err)
	}
	inserted, err := pgx.CollectRows(rows, pgx.RowTo[[16]byte])
	if err != nil {
		return nil, fmt.Errorf("claim event ids: %w", err)
	}
	isNew := make(map[uuid.UUID]bool, len(inserted))
	for _, id := range inserted {
		isNew[id] = true
	}
	out := make([]Status, len(items))
	var seen pgarray.UUIDs
	for i, it := range items {
		if isNew[it.ID] {
			delete(isNew, it.ID) // a second occurrence of the ID is not new
			out[i] = New
			continue
		}
		seen = append(seen, it.ID)
	}
	if len(seen) == 0 {
		return out, nil
	}
	stored, err := collectFingerprints(ctx, q, seen)
	if err != nil {
		return nil, fmt.Errorf("read fingerprints of processed events: %w", err)
	}
	for i, it := range items {
		if out[i] == New {
			continue
		}
		fp, ok := stored[it.ID]
		switch {
		case !ok:
			return nil, fmt.Errorf("claim event ids: %s neither inserted nor found", it.ID)
		case fp == it.Fingerprint:
			out[i] = Duplicate
		default:
			out[i] = Conflict
		}
	}
	return out, nil
}

// collectFingerprints reads the stored fingerprints of ids.
func collectFingerprints(ctx context.Context, q Querier, ids pgarray.UUIDs) (map[uuid.UUID]int64, error) {
	rows, err := q.Query(ctx, fingerprintsSQL, ids)
	if err != nil {
		return nil, err
	}
	return scanFingerprints(rows, len(ids))
}

// scanFingerprints reads the rows of fingerprintsSQL, about n of them, and
// closes them. It returns every row or an error, never part of a result.
func scanFingerprints(rows pgx.Rows, n int) (map[uuid.UUID]int64, error) {
	defer rows.Close()
	got := make(map[uuid.UUID]int64, n)
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
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return got, nil
}
