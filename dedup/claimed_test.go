package dedup_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/dedup"
)

// pipelinedClaim queues a claim of items between two other statements, sends
// the batch in a transaction (committed when commit is set) and returns the
// statuses and how many extra queries Statuses ran.
func pipelinedClaim(t *testing.T, pool *pgxpool.Pool, commit bool, items ...dedup.Item) (got []dedup.Status, extra int) {
	t.Helper()
	ctx := t.Context()
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		var before, after int
		b := &pgx.Batch{}
		b.Queue(`SELECT 1`).QueryRow(func(r pgx.Row) error { return r.Scan(&before) })
		c := dedup.QueueClaim(b, items)
		b.Queue(`SELECT count(*) FROM processed_events`).QueryRow(func(r pgx.Row) error { return r.Scan(&after) })
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		if before != 1 {
			t.Errorf("statement before the claim returned %d, want 1", before)
		}
		q := &countingQuerier{q: tx}
		var err error
		got, err = c.Statuses(ctx, q)
		extra = q.n
		if err == nil && !commit {
			err = errRollback
		}
		return err
	})
	if err != nil && !errors.Is(err, errRollback) {
		t.Fatalf("pipelined claim: %v", err)
	}
	return got, extra
}

// countingQuerier counts the queries run through it.
type countingQuerier struct {
	q dedup.Querier
	n int
}

func (c *countingQuerier) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n++
	return c.q.Query(ctx, sql, args...)
}

// A claim whose batch failed before the claim's result was read reports an
// error instead of statuses, and the failed transaction leaves no claim.
func TestQueueClaimBatchFailed(t *testing.T) {
	pool := newPool(t)
	ctx := t.Context()
	id := uuid.New()

	notSent := dedup.QueueClaim(&pgx.Batch{}, []dedup.Item{{id, 1}})
	if _, err := notSent.Statuses(ctx, pool); err == nil {
		t.Error("Statuses of a claim whose batch was never sent returned no error")
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the transaction failed; rolling back is all that is left
	b := &pgx.Batch{}
	b.Queue(`SELECT 1/0`)
	c := dedup.QueueClaim(b, []dedup.Item{{id, 1}})
	if err := tx.SendBatch(ctx, b).Close(); err == nil {
		t.Fatal("a batch with a division by zero succeeded")
	}
	if st, err := c.Statuses(ctx, tx); err == nil {
		t.Errorf("Statuses after the batch failed = %v, want an error", st)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM processed_events`).Scan(&n); err != nil || n != 0 {
		t.Errorf("processed_events has %d rows (%v), want 0", n, err)
	}
}
