package bench

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// refBatch is the batch size of the reference writers: the size the
// hand-written consumers heed is compared with use.
const refBatch = 5000

// A reference is a consumer written by hand for the benchmark's events, with
// no heed code, on as many connections as the applier runs transactions at
// once, each partition's events in log order, in batches of refBatch:
//
//   - peer_batched: the statement a careful hand-written pipeline sends for a
//     batch (e.g. Bento with a batched SQL output): the event IDs inserted
//     into a processed table ON CONFLICT DO NOTHING, then each account's
//     summed amount upserted;
//   - floor: the least any correct consumer can write for dedup plus state:
//     COPY of the batch's IDs into a processed table, then the summed upsert.
//     No outcomes, no fingerprints, no positions.
type reference struct {
	phase string
	write func(ctx context.Context, tx pgx.Tx, b []event) error
}

var (
	peerBatched = reference{"peer_batched", writePeerBatched}
	floor       = reference{"floor", writeFloor}
)

// references measures both references on data, before the drain.
func (e *env) references(ctx context.Context, data *dataset, r *Result) error {
	for _, ref := range []struct {
		reference
		out *[]float64
		pg  *perEvent
	}{{peerBatched, &r.PeerBatchedRuns, &r.PeerBatchedPostgres}, {floor, &r.FloorRuns, &r.FloorPostgres}} {
		rate, pg, err := e.referenceRun(ctx, ref.phase, data, ref.write)
		if err != nil {
			return err
		}
		*ref.out, *ref.pg = []float64{rate}, pg
		e.progress("%s: %.0f events/s", ref.phase, rate)
	}
	r.PeerBatched, r.Floor = r.PeerBatchedRuns[0], r.FloorRuns[0]
	return e.consumerReferences(ctx, data, r, false)
}

// referencesAgain measures both references once more, on a dataset like the
// first (generated anew: the drain dropped it), and makes each the mean of its
// two runs. Run calls it right after the drain, so that the references are
// measured on both sides of it: this machine's speed drifts by a quarter
// within minutes.
func (e *env) referencesAgain(ctx context.Context, r *Result) error {
	data, err := newDataset(e.cfg.Accounts, e.cfg.Events, randomIDs)
	if err != nil {
		return err
	}
	for _, ref := range []struct {
		reference
		runs *[]float64
		mean *float64
	}{{peerBatched, &r.PeerBatchedRuns, &r.PeerBatched}, {floor, &r.FloorRuns, &r.Floor}} {
		rate, _, err := e.referenceRun(ctx, ref.phase+"_after", data, ref.write)
		if err != nil {
			return err
		}
		*ref.runs = append(*ref.runs, rate)
		*ref.mean = mean(*ref.runs)
		e.progress("%s after the drain: %.0f events/s; the figure is the mean of %v: %.0f events/s", ref.phase, rate, *ref.runs, *ref.mean)
	}
	return e.consumerReferences(ctx, data, r, true)
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}

func (e *env) referenceRun(ctx context.Context, phase string, data *dataset, write func(context.Context, pgx.Tx, []event) error) (float64, perEvent, error) {
	conc := e.cfg.Applier.Concurrency
	pool, _, drop, err := e.freshSchema(ctx, phase, int32(conc))
	if err != nil {
		return 0, perEvent{}, err
	}
	defer drop()
	if _, err := pool.Exec(ctx, `CREATE TABLE ref_processed (event_id uuid PRIMARY KEY)`); err != nil {
		return 0, perEvent{}, fmt.Errorf("%s: %w", phase, err)
	}

	// One stream per partition, in log order, as a consumer sees them.
	streams := make([][]event, e.cfg.Partitions)
	for _, ev := range data.events {
		p := accountPartition(ev.account, e.cfg.Partitions)
		streams[p] = append(streams[p], ev)
	}
	slots := make(chan struct{}, conc)
	pg0 := e.pgUsage(ctx)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range streams {
		g.Go(func() error {
			for i := 0; i < len(s); i += refBatch {
				slots <- struct{}{}
				err := pgx.BeginFunc(gctx, pool, func(tx pgx.Tx) error { return write(gctx, tx, s[i:min(i+refBatch, len(s))]) })
				<-slots
				if err != nil {
					return fmt.Errorf("%s: %w", phase, err)
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, perEvent{}, err
	}
	elapsed := time.Since(start)
	pg := e.pgUsage(ctx).since(pg0, len(data.events))
	if err := checkLedgerIn(ctx, pool, "ref_processed", data.accounts, data.deposits(), int64(len(data.events))); err != nil {
		return 0, perEvent{}, fmt.Errorf("%s: %w", phase, err)
	}
	e.progress("%s: Postgres used %.1f µs of CPU and wrote %.0f bytes of WAL per event", phase, pg.CPU, pg.WAL)
	return float64(len(data.events)) / elapsed.Seconds(), pg, nil
}

// accountPartition spreads accounts over partitions for the references; any
// stable spread does, since they read no broker.
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

func writePeerBatched(ctx context.Context, tx pgx.Tx, b []event) error {
	ids := make([][16]byte, len(b))
	for i, ev := range b {
		ids[i] = ev.id
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ref_processed (event_id) SELECT * FROM unnest($1::uuid[]) ON CONFLICT DO NOTHING`, ids); err != nil {
		return fmt.Errorf("insert processed ids: %w", err)
	}
	return upsertAccounts(ctx, tx, b)
}

func writeFloor(ctx context.Context, tx pgx.Tx, b []event) error {
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"ref_processed"}, []string{"event_id"},
		pgx.CopyFromSlice(len(b), func(i int) ([]any, error) { return []any{[16]byte(b[i].id)}, nil })); err != nil {
		return fmt.Errorf("copy processed ids: %w", err)
	}
	return upsertAccounts(ctx, tx, b)
}
