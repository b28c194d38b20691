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
	l := dedup.QueueLookup(b, items)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	st, err := l.Statuses()
	if err != nil {
		return nil, err
	}
	b = &pgx.Batch{}
	if err := l.QueueRecord(b); err != nil {
		return nil, err
	}
	return st, tx.SendBatch(ctx, b).Close()
}

// lookup sends a lookup of items in tx and returns it with its statuses.
func lookup(t *testing.T, tx pgx.Tx, items ...dedup.Item) (*dedup.Lookup, []dedup.Status) {
	t.Helper()
	b := &pgx.Batch{}
	l := dedup.QueueLookup(b, items)
	if err := tx.SendBatch(t.Context(), b).Close(); err != nil {
		t.Fatalf("lookup: %v", err)
	}
	st, err := l.Statuses()
	if err != nil {
		t.Fatalf("statuses: %v", err)
	}
	return l, st
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
	l1, st1 := lookup(t, tx1, dedup.Item{ID: x, Fingerprint: 1})
	l2, st2 := lookup(t, tx2, dedup.Item{ID: y, Fingerprint: 2}, dedup.Item{ID: x, Fingerprint: 1})
	if want := []dedup.Status{dedup.New}; !slices.Equal(st1, want) {
		t.Fatalf("first lookup: %v, want %v", st1, want)
	}
	if want := []dedup.Status{dedup.New, dedup.New}; !slices.Equal(st2, want) {
		t.Fatalf("second lookup, before the first records: %v, want %v", st2, want)
	}
	record := func(tx pgx.Tx, l *dedup.Lookup) error {
		b := &pgx.Batch{}
		if err := l.QueueRecord(b); err != nil {
			t.Fatal(err)
		}
		return tx.SendBatch(ctx, b).Close()
	}
	if err := record(tx1, l1); err != nil {
		t.Fatal(err)
	}
	if err := tx1.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	err := record(tx2, l2)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || !errors.Is(err, dedup.ErrRecordedConcurrently) || !strings.Contains(err.Error(), "record event ids") {
		t.Fatalf("recording an ID another transaction recorded since: %v, want a unique violation wrapped with \"record event ids\" and ErrRecordedConcurrently", err)
	}
	if err := tx2.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	retry := begin()
	l3, st3 := lookup(t, retry, dedup.Item{ID: y, Fingerprint: 2}, dedup.Item{ID: x, Fingerprint: 1})
	if want := []dedup.Status{dedup.New, dedup.Duplicate}; !slices.Equal(st3, want) {
		t.Fatalf("retried lookup: %v, want %v", st3, want)
	}
	if err := record(retry, l3); err != nil {
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
// reports an error from Statuses and from QueueRecord instead of statuses.
func TestLookupBatchFailed(t *testing.T) {
	pool := newPool(t)
	items := []dedup.Item{{ID: uuid.New(), Fingerprint: 1}}

	notSent := dedup.QueueLookup(&pgx.Batch{}, items)
	if st, err := notSent.Statuses(); err == nil {
		t.Errorf("Statuses of a lookup whose batch was never sent = %v, want an error", st)
	}
	if err := notSent.QueueRecord(&pgx.Batch{}); err == nil {
		t.Error("QueueRecord of a lookup whose batch was never sent queued the INSERT")
	}

	ctx := t.Context()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the transaction failed; rolling back is all that is left
	b := &pgx.Batch{}
	b.Queue(`SELECT 1/0`)
	l := dedup.QueueLookup(b, items)
	if err := tx.SendBatch(ctx, b).Close(); err == nil {
		t.Fatal("a batch with a division by zero succeeded")
	}
	if st, err := l.Statuses(); err == nil {
		t.Errorf("Statuses after the batch failed = %v, want an error", st)
	}
}
