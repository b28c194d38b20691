package dedup_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/dedup"
)

// lookupClaim runs lookupAndRecord in a transaction committed when commit is set.
func lookupClaim(t *testing.T, pool *pgxpool.Pool, commit bool, items ...dedup.Item) (got []dedup.Status) {
	t.Helper()
	err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		var err error
		if got, err = lookupAndRecord(t.Context(), tx, items); err == nil && !commit {
			err = errRollback
		}
		return err
	})
	if err != nil && !errors.Is(err, errRollback) {
		t.Fatalf("lookup and record: %v", err)
	}
	return got
}

// lookupAndRecord looks items up in one batch and records the new ones in a
// second, as the applier does, in tx.
func lookupAndRecord(ctx context.Context, tx pgx.Tx, items []dedup.Item) ([]dedup.Status, error) {
	b := &pgx.Batch{}
	l := dedup.QueueLookup(b, items, 0)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	st, err := l.Statuses()
	if err != nil {
		return nil, err
	}
	return st, dedup.Record(ctx, tx, newRows(items, st))
}

// newRows are the rows recording the New items, applied.
func newRows(items []dedup.Item, st []dedup.Status) []dedup.Row {
	var rows []dedup.Row
	for i, it := range items {
		if st[i] == dedup.New {
			rows = append(rows, dedup.Row{Item: it, Outcome: dedup.Applied})
		}
	}
	return rows
}

// lookup sends a lookup of items in tx and returns their statuses.
func lookup(t *testing.T, tx pgx.Tx, items ...dedup.Item) []dedup.Status {
	t.Helper()
	b := &pgx.Batch{}
	l := dedup.QueueLookup(b, items, 0)
	if err := tx.SendBatch(t.Context(), b).Close(); err != nil {
		t.Fatalf("lookup: %v", err)
	}
	st, err := l.Statuses()
	if err != nil {
		t.Fatalf("statuses: %v", err)
	}
	return st
}

// Two transactions that look up the same new ID both see it as New; the one
// that records it second fails on the primary key and must roll back, and its
// retry finds the ID processed: an ID is recorded once and reported New to one
// committed transaction only.
func TestLookupRace(t *testing.T) {
	pool := newPool(t)
	ctx := t.Context()
	x, y := uuid.New(), uuid.New()
	begin := func() pgx.Tx {
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(ctx) }) // a no-op once committed or rolled back
		return tx
	}
	tx1, tx2 := begin(), begin()
	items1 := []dedup.Item{{ID: x, Key: "k", Fingerprint: 1}}
	items2 := []dedup.Item{{ID: y, Key: "k", Fingerprint: 2}, {ID: x, Key: "k", Fingerprint: 1}}
	st1 := lookup(t, tx1, items1...)
	st2 := lookup(t, tx2, items2...)
	if want := []dedup.Status{dedup.New}; !slices.Equal(st1, want) {
		t.Fatalf("first lookup: %v, want %v", st1, want)
	}
	if want := []dedup.Status{dedup.New, dedup.New}; !slices.Equal(st2, want) {
		t.Fatalf("second lookup, before the first records: %v, want %v", st2, want)
	}
	record := func(tx pgx.Tx, items []dedup.Item, st []dedup.Status) error {
		return dedup.Record(ctx, tx, newRows(items, st))
	}
	if err := record(tx1, items1, st1); err != nil {
		t.Fatal(err)
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err := record(tx2, items2, st2)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || !errors.Is(err, dedup.ErrRecordedConcurrently) || !strings.Contains(err.Error(), "record event ids") {
		t.Fatalf("recording an ID another transaction recorded since: %v, want a unique violation wrapped with \"record event ids\" and ErrRecordedConcurrently", err)
	}
	if err := tx2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	retry := begin()
	st3 := lookup(t, retry, items2...)
	if want := []dedup.Status{dedup.New, dedup.Duplicate}; !slices.Equal(st3, want) {
		t.Fatalf("retried lookup: %v, want %v", st3, want)
	}
	if err := record(retry, items2, st3); err != nil {
		t.Fatal(err)
	}
	if err := retry.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM processed_events`).Scan(&n); err != nil || n != 2 {
		t.Errorf("processed_events has %d rows (%v), want 2 (x once, y)", n, err)
	}
}

// A lookup whose batch was never sent, or failed before its result was read,
// reports an error from Statuses instead of statuses.
func TestLookupBatchFailed(t *testing.T) {
	pool := newPool(t)
	items := []dedup.Item{{ID: uuid.New(), Key: "k", Fingerprint: 1}}

	notSent := dedup.QueueLookup(&pgx.Batch{}, items, 0)
	if st, err := notSent.Statuses(); err == nil {
		t.Errorf("Statuses of a lookup whose batch was never sent = %v, want an error", st)
	}

	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the transaction failed; rolling back is all that is left
	b := &pgx.Batch{}
	b.Queue(`SELECT 1/0`)
	l := dedup.QueueLookup(b, items, 0)
	if err := tx.SendBatch(ctx, b).Close(); err == nil {
		t.Fatal("a batch with a division by zero succeeded")
	}
	if st, err := l.Statuses(); err == nil {
		t.Errorf("Statuses after the batch failed = %v, want an error", st)
	}
}
