package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// ceiling writes the rows the applier would write for data, with plain SQL and
// no heed code, in batches of the applier's size on as many connections as it
// runs transactions at once: once with an unnest INSERT per table, once with
// COPY for the per-event tables. The account upsert is one statement per batch
// in both.
func (e *env) ceiling(ctx context.Context, data *dataset, r *Result) error {
	for _, c := range []struct {
		phase string
		write func(ctx context.Context, tx pgx.Tx, b []event) error
		out   *float64
	}{
		{"ceiling_sql", writeBatchedSQL, &r.CeilingBatched},
		{"ceiling_copy", writeCopy, &r.CeilingCopy},
	} {
		rate, err := e.ceilingRun(ctx, c.phase, data, c.write)
		if err != nil {
			return err
		}
		*c.out = rate
		e.progress("%s: %.0f events/s", c.phase, rate)
	}
	r.CeilingBatchedRuns = []float64{r.CeilingBatched}
	return nil
}

// ceilingAgain runs the batched-SQL ceiling once more, on a dataset like the
// first (generated anew: the drain dropped it), and makes the ceiling the mean
// of both runs. Run calls it right after the drain, so that the ceiling is
// measured on both sides of it: this machine's speed drifts by a quarter
// within minutes.
func (e *env) ceilingAgain(ctx context.Context, r *Result) error {
	data, err := newDataset(e.cfg.Accounts, e.cfg.Events)
	if err != nil {
		return err
	}
	rate, err := e.ceilingRun(ctx, "ceiling_sql_after", data, writeBatchedSQL)
	if err != nil {
		return err
	}
	before := r.CeilingBatched
	r.CeilingBatchedRuns = []float64{before, rate}
	r.CeilingBatched = (before + rate) / 2
	e.progress("ceiling_sql after the drain: %.0f events/s; the ceiling is the mean of %.0f and %.0f: %.0f events/s",
		rate, before, rate, r.CeilingBatched)
	return nil
}

func (e *env) ceilingRun(ctx context.Context, phase string, data *dataset, write func(context.Context, pgx.Tx, []event) error) (float64, error) {
	batchSize, conc := e.cfg.Applier.MaxBatchRecords, e.cfg.Applier.Concurrency
	pool, _, drop, err := e.freshSchema(ctx, phase, int32(conc))
	if err != nil {
		return 0, err
	}
	defer drop()

	// One stream per partition, in log order, as the applier sees them.
	streams := make([][]event, e.cfg.Partitions)
	for _, ev := range data.events {
		p := accountPartition(ev.account, e.cfg.Partitions)
		streams[p] = append(streams[p], ev)
	}
	slots := make(chan struct{}, conc)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range streams {
		g.Go(func() error {
			for i := 0; i < len(s); i += batchSize {
				slots <- struct{}{}
				err := pgx.BeginFunc(gctx, pool, func(tx pgx.Tx) error { return write(gctx, tx, s[i:min(i+batchSize, len(s))]) })
				<-slots
				if err != nil {
					return fmt.Errorf("%s: %w", phase, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	elapsed := time.Since(start)
	if err := checkLedger(ctx, pool, data.accounts, data.deposits(), int64(len(data.events))); err != nil {
		return 0, fmt.Errorf("%s: %w", phase, err)
	}
	return float64(len(data.events)) / elapsed.Seconds(), nil
}

// accountPartition spreads accounts over partitions for the ceiling; any stable
// spread does, since the ceiling has no broker.
func accountPartition(account string, partitions int32) int32 {
	var h uint32 = 2166136261
	for i := 0; i < len(account); i++ {
		h = (h ^ uint32(account[i])) * 16777619
	}
	return int32(h % uint32(partitions))
}

// deltas sums a batch's amounts per account, sorted by account so that
// concurrent transactions lock rows in one order.
func deltas(b []event) ([]string, []int64) {
	sum := map[string]int64{}
	for _, ev := range b {
		sum[ev.account] += ev.amount
	}
	ids := make([]string, 0, len(sum))
	for id := range sum {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	amounts := make([]int64, len(ids))
	for i, id := range ids {
		amounts[i] = sum[id]
	}
	return ids, amounts
}

func upsertAccounts(ctx context.Context, tx pgx.Tx, b []event) error {
	ids, amounts := deltas(b)
	_, err := tx.Exec(ctx, `INSERT INTO accounts (account_id, balance) SELECT * FROM unnest($1::text[], $2::int8[])
ON CONFLICT (account_id) DO UPDATE SET balance = accounts.balance + excluded.balance`, ids, amounts)
	if err != nil {
		return fmt.Errorf("upsert accounts: %w", err)
	}
	return nil
}

func writeBatchedSQL(ctx context.Context, tx pgx.Tx, b []event) error {
	ids := make([][16]byte, len(b))
	fps := make([]int64, len(b))
	reqs := make([]string, len(b))
	accts := make([]string, len(b))
	statuses := make([]int16, len(b))
	reasons := make([]string, len(b))
	after := make([]int64, len(b))
	for i, ev := range b {
		ids[i], fps[i], reqs[i], accts[i], statuses[i], after[i] = ev.id, ev.fingerprint, ev.requestID, ev.account, 2, ev.balanceAfter
	}
	if _, err := tx.Exec(ctx, `INSERT INTO processed_events (event_id, fingerprint) SELECT * FROM unnest($1::uuid[], $2::int8[])`, ids, fps); err != nil {
		return fmt.Errorf("insert processed_events: %w", err)
	}
	if err := upsertAccounts(ctx, tx, b); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO command_results (event_id, request_id, account_id, status, reason, balance_after)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int2[], $5::text[], $6::int8[])`, ids, reqs, accts, statuses, reasons, after); err != nil {
		return fmt.Errorf("insert command_results: %w", err)
	}
	return nil
}

func writeCopy(ctx context.Context, tx pgx.Tx, b []event) error {
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"processed_events"}, []string{"event_id", "fingerprint"},
		pgx.CopyFromSlice(len(b), func(i int) ([]any, error) { return []any{[16]byte(b[i].id), b[i].fingerprint}, nil })); err != nil {
		return fmt.Errorf("copy processed_events: %w", err)
	}
	if err := upsertAccounts(ctx, tx, b); err != nil {
		return err
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"command_results"}, []string{"event_id", "request_id", "account_id", "status", "reason", "balance_after"},
		pgx.CopyFromSlice(len(b), func(i int) ([]any, error) {
			return []any{[16]byte(b[i].id), b[i].requestID, b[i].account, int16(2), "", b[i].balanceAfter}, nil
		})); err != nil {
		return fmt.Errorf("copy command_results: %w", err)
	}
	return nil
}
