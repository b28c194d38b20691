package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/ledger"
)

// pollInterval is how often the e2e phase reads the applied positions: the
// resolution of its ack→readable latencies. Every poll is a query, measured
// at about 8% of the process's CPU at 1ms, so not finer.
const pollInterval = 2 * time.Millisecond

// e2e runs the server and the applier together and offers Rate deposits/s for
// Duration (open loop: a command is sent at its scheduled time by whichever of
// Clients callers is free). For each acknowledged command it records when its
// position in the topic became applied in Postgres (readable), polling the
// applied positions every pollInterval.
func (e *env) e2e(ctx context.Context, r *Result) error {
	pool, _, drop, err := e.freshSchema(ctx, "e2e", int32(e.cfg.Applier.Concurrency)+8)
	if err != nil {
		return err
	}
	defer drop()
	topic, cl, del, err := e.topic(ctx, "e2e")
	if err != nil {
		return err
	}
	defer del()

	// Open the accounts and apply the opens before the clock starts.
	opens, err := newDataset(e.cfg.Accounts, 0, randomIDs)
	if err != nil {
		return err
	}
	recs, _ := opens.records()
	if err := e.produce(ctx, cl, recs); err != nil {
		return err
	}
	a, err := applier.New(e.applierConfig(e.cfg.Applier, topic, e.name("e2e")), pool, ledger.Domain().Handler())
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	applied := make(chan error, 1)
	go func() { applied <- a.Run(runCtx) }()
	for a.Stats().Applied < int64(e.cfg.Accounts) {
		select {
		case err := <-applied:
			if err == nil {
				err = errors.New("it returned without an error")
			}
			return fmt.Errorf("the applier stopped before applying the opens: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}

	pub, err := e.publisher(topic)
	if err != nil {
		return err
	}
	defer pub.Close()
	addr, stop, err := e.serve(ctx, pub, pool, topic)
	if err != nil {
		return err
	}
	defer stop()
	client, closeIdle := e.client(addr)
	defer closeIdle() // before stop

	tr := newTracker()
	pollCtx, stopPoll := context.WithCancel(ctx)
	polled := make(chan error, 1)
	go func() {
		err := tr.poll(pollCtx, pool, topic)
		if err != nil {
			tr.fail(fmt.Errorf("read the applied positions: %w", err))
		}
		polled <- err
	}()
	defer func() {
		stopPoll()
		<-polled
	}()

	type job struct{ due time.Time }
	jobs := make(chan job, e.cfg.Clients)
	var (
		mu      sync.Mutex
		ackLat  latencies
		failure error
		acks    int64
	)
	var wg sync.WaitGroup
	for c := range e.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			for j := range jobs {
				res, err := client.Deposit(ctx, e.depositRequest(rng))
				at := time.Now()
				var tok consistency.Token
				if err == nil {
					tok, err = consistency.Parse(res.Msg.GetConsistencyToken())
				}
				mu.Lock()
				if err != nil {
					if failure == nil {
						failure = err
					}
				} else {
					acks++
					ackLat = append(ackLat, at.Sub(j.due))
				}
				mu.Unlock()
				if err == nil {
					tr.add(tok, at)
				}
			}
		}()
	}
	interval := time.Second / time.Duration(e.cfg.Rate)
	start := time.Now()
	end := start.Add(e.cfg.Duration)
	sent := 0
	for due := start; due.Before(end) && ctx.Err() == nil; due = due.Add(interval) {
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		jobs <- job{due: due}
		sent++
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	if failure != nil {
		return fmt.Errorf("a Deposit failed under load: %w", failure)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := tr.waitAll(ctx, 30*time.Second); err != nil {
		return err
	}
	cancel()
	if err := <-applied; err != nil {
		return fmt.Errorf("applier: %w", err)
	}
	if err := checkLedger(ctx, pool, e.cfg.Accounts, acks, int64(e.cfg.Accounts)+acks); err != nil {
		return err
	}
	lat := tr.latencies()
	st := a.Stats()
	r.E2EBatches = st.Batches
	e.progress("e2e: the applier committed %d transactions, %.1f events each", st.Batches, float64(st.Applied)/float64(max(st.Batches, 1)))
	ackLat.sort()
	r.E2EOffered, r.E2ECommands = e.cfg.Rate, sent
	r.E2EAchieved = float64(acks) / elapsed.Seconds()
	r.E2EAckP99 = ms(ackLat.quantile(0.99))
	r.E2EP50, r.E2EP99, r.E2EMax = ms(lat.quantile(0.5)), ms(lat.quantile(0.99)), ms(lat.quantile(1))
	e.progress("e2e: %d commands at %.0f/s (offered %d/s), ack p99 %.2f ms, ack→readable p50 %.2f ms, p99 %.2f ms, max %.2f ms",
		acks, r.E2EAchieved, r.E2EOffered, r.E2EAckP99, r.E2EP50, r.E2EP99, r.E2EMax)
	return nil
}

// tracker matches acknowledged positions with the applied positions.
type tracker struct {
	mu      sync.Mutex
	pending map[int32][]pendingAck
	lat     latencies
	failed  error // why polling stopped early; nothing pending can be observed after it
}

type pendingAck struct {
	offset int64
	at     time.Time
}

func newTracker() *tracker { return &tracker{pending: map[int32][]pendingAck{}} }

func (t *tracker) add(tok consistency.Token, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pending[tok.Partition] = append(t.pending[tok.Partition], pendingAck{tok.Offset, at})
}

// observe records, for every pending ack below its partition's applied
// position, the time from its ack to seen (when the read that saw it began).
// fail records why polling stopped, for waitAll to report instead of a timeout.
func (t *tracker) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.failed = err
}

func (t *tracker) observe(positions map[int32]int64, seen time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	left := 0
	for p, acks := range t.pending {
		next, ok := positions[p]
		kept := acks[:0]
		for _, a := range acks {
			if ok && a.offset < next {
				t.lat = append(t.lat, max(0, seen.Sub(a.at)))
			} else {
				kept = append(kept, a)
			}
		}
		t.pending[p] = kept
		left += len(kept)
	}
	return left
}

func (t *tracker) poll(ctx context.Context, pool *pgxpool.Pool, topic string) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	positions := map[int32]int64{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		seen := time.Now()
		rows, err := conn.Query(ctx, `SELECT partition, next_offset FROM applied_positions WHERE topic = $1`, topic)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		for rows.Next() {
			var p int32
			var next int64
			if err := rows.Scan(&p, &next); err != nil {
				rows.Close()
				return err
			}
			positions[p] = next
		}
		if err := rows.Err(); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		t.observe(positions, seen)
	}
}

// waitAll waits until no acknowledged command is pending.
func (t *tracker) waitAll(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		t.mu.Lock()
		left, failed := 0, t.failed
		for _, acks := range t.pending {
			left += len(acks)
		}
		t.mu.Unlock()
		if failed != nil {
			return failed
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("WRONG RESULT: %d acknowledged commands were not applied %s after the load ended", left, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (t *tracker) latencies() latencies {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := slices.Clone(t.lat)
	out.sort()
	return out
}
