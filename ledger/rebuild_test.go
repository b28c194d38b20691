package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/audit"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/rebuild"
)

// newRebuilder opens a rebuild of the pipeline's topic into schema into.
func (p *pipeline) newRebuilder(t *testing.T, into string) *rebuild.Rebuilder {
	t.Helper()
	r, err := rebuild.Open(t.Context(), rebuild.Config{
		DatabaseURL: p.pool.Config().ConnString(),
		Live:        testSchema,
		Into:        into,
		Sets:        ledger.Schema,
		Handler:     ledger.Applier{},
		Applier:     applier.Config{Brokers: p.broker, Topic: p.topic, Group: p.group, MaxBatchRecords: 500},
		Logger:      testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("rebuild.Open: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

// depositLoad sends deposits of 1..9 over accounts from workers until stop
// is called, retrying each with its request ID until acknowledged, and
// returns what was acknowledged per account.
type depositLoad struct {
	stopOnce sync.Once
	quit     chan struct{}
	wg       sync.WaitGroup
	mu       sync.Mutex
	acked    map[string]int64 // account → sum of acknowledged deposits
	n        atomic.Int64
	errs     []error
}

func startDepositLoad(p *pipeline, accounts []string, workers int) *depositLoad {
	l := &depositLoad{quit: make(chan struct{}), acked: map[string]int64{}}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.quit:
					return
				default:
				}
				acct := accounts[(w*7+i)%len(accounts)]
				amount := int64(1 + (i % 9))
				req := &ledgerv1.DepositRequest{RequestId: fmt.Sprintf("load-%d-%d", w, i), AccountId: acct, Amount: amount}
				for attempt := 0; ; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := p.client.Deposit(ctx, connect.NewRequest(req))
					cancel()
					if err == nil {
						break
					}
					if attempt == 20 {
						l.mu.Lock()
						l.errs = append(l.errs, fmt.Errorf("deposit %s: %w", req.RequestId, err))
						l.mu.Unlock()
						return
					}
					time.Sleep(100 * time.Millisecond)
				}
				l.mu.Lock()
				l.acked[acct] += amount
				l.mu.Unlock()
				l.n.Add(1)
			}
		}()
	}
	return l
}

func (l *depositLoad) stop(t *testing.T) map[string]int64 {
	t.Helper()
	l.stopOnce.Do(func() { close(l.quit) })
	l.wg.Wait()
	for _, err := range l.errs {
		t.Errorf("load: %v", err)
	}
	return l.acked
}

// waitCaughtUp waits until schema heed's applied positions equal the topic's end.
func (p *pipeline) waitCaughtUp(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() string {
		ends := p.endOffsets(t)
		for part, end := range ends {
			var pos int64
			_ = p.pool.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM applied_positions WHERE topic = $1 AND partition = $2`, p.topic, part).Scan(&pos)
			if pos != end {
				return fmt.Sprintf("partition %d applied to %d of %d", part, pos, end)
			}
		}
		return ""
	})
}

// TestRebuildSwapUnderLoad rebuilds the projection into a fresh schema while
// commands flow and readers read, verifies it against the live one at the
// same positions, and swaps it in: the live applier follows the swap without
// a restart, readers never fail, and every acknowledged deposit is applied
// exactly once in the end.
func TestRebuildSwapUnderLoad(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 4})
	live := p.startApplier(t)
	var accounts []string
	for i := range 12 {
		acct := fmt.Sprintf("acct-%02d", i)
		accounts = append(accounts, acct)
		p.open(t, "open-"+acct, acct)
	}
	// A duplicate in the topic, written by hand: suppressed live and in
	// the rebuild alike.
	res := p.deposit(t, "dup-1", accounts[0], 5)
	p.produceRaw(t, p.fetchRecord(t, token(t, res.GetConsistencyToken())))

	p.waitCaughtUp(t) // the opens are applied: a read that finds no account is a failure from here on
	load := startDepositLoad(p, accounts, 4)
	var readFailures atomic.Int64
	var readErr atomic.Value
	readCtx, stopReads := context.WithCancel(context.Background())
	readsDone := make(chan struct{})
	go func() {
		defer close(readsDone)
		for i := 0; readCtx.Err() == nil; i++ {
			_, err := p.client.GetAccount(readCtx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: accounts[i%len(accounts)]}))
			if err != nil && readCtx.Err() == nil {
				readFailures.Add(1)
				readErr.Store(err)
			}
		}
	}()
	time.Sleep(time.Second)

	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	rep, err := r.Verify(t.Context(), 30*time.Second)
	if err != nil {
		t.Fatalf("Verify under load: %v", err)
	}
	t.Logf("verified at %v: %d tables", rep.Positions, len(rep.Tables))
	time.Sleep(500 * time.Millisecond)
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	sw, err := r.Swap(t.Context(), rebuild.SwapOptions{Old: "heed_old", Verify: true, Timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("Swap under load: %v", err)
	}
	t.Logf("swapped at %v", sw.Positions)
	time.Sleep(time.Second) // the load and the live applier go on, on the swapped-in schema
	acked := load.stop(t)
	stopReads()
	<-readsDone
	if n := readFailures.Load(); n > 0 {
		t.Errorf("%d reads failed across the swap, e.g. %v", n, readErr.Load())
	}
	p.waitCaughtUp(t)

	// The live applier followed the swap: waitCaughtUp above found the
	// positions of the schema now named heed at the topic's end, past what
	// the swap left there (after, below), and only the live applier runs.
	// That schema is the rebuilt one: none of its positions is retired.
	if n := p.count(t, `SELECT count(*) FROM applied_positions WHERE retired_at IS NOT NULL`); n != 0 {
		t.Errorf("%d positions of the schema named heed are retired: the swap did not put the rebuilt projection there", n)
	}
	var after int64
	for part, pos := range p.endOffsets(t) {
		after += pos - sw.Positions[part]
	}
	if after == 0 {
		t.Fatalf("no record was written after the swap; the test shows nothing about the applier following it")
	}
	got := p.balances(t)
	for _, acct := range accounts {
		want := acked[acct]
		if acct == accounts[0] {
			want += 5
		}
		if got[acct] != want {
			t.Errorf("%s: balance %d, want %d (the acknowledged deposits)", acct, got[acct], want)
		}
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events`); n != int64(load.n.Load())+int64(len(accounts))+1 {
		t.Errorf("processed_events holds %d rows, want %d (every acknowledged command once)", n, load.n.Load()+int64(len(accounts))+1)
	}
	if n := p.count(t, `SELECT count(*) FROM heed_old.applied_positions WHERE retired_at IS NULL`); n != 0 {
		t.Errorf("%d positions of the old projection are not retired", n)
	}
	t.Logf("%d deposits acknowledged, %d records after the swap, live applier stats %+v", load.n.Load(), after, live.Stats())

	// The old projection can be dropped, the live one cannot.
	if err := rebuild.DropOld(t.Context(), p.pool, testSchema); err == nil || !strings.Contains(err.Error(), "not a projection retired") {
		t.Errorf("DropOld(heed) = %v, want a refusal: it is live", err)
	}
	if err := rebuild.DropOld(t.Context(), p.pool, "heed_old"); err != nil {
		t.Errorf("DropOld(heed_old): %v", err)
	}
}

// TestRebuildVerifyFindsDifference: a live projection changed by hand (what a
// bug in an older applier, or a manual fix, leaves) differs from the topic's
// replay, and Verify names the table and the rows; Swap then swaps nothing.
func TestRebuildVerifyFindsDifference(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	p.startApplier(t)
	p.open(t, "o1", "alice")
	p.open(t, "o2", "bob")
	p.deposit(t, "d1", "alice", 10)
	p.waitCaughtUp(t) // bob's open too: it is on another partition
	if tag, err := p.pool.Exec(t.Context(), `UPDATE accounts SET balance = balance + 1 WHERE account_id = 'bob'`); err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("change bob's balance by hand: %v, %d rows", err, tag.RowsAffected())
	}
	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	rep, err := r.Verify(t.Context(), 30*time.Second)
	if !errors.Is(err, rebuild.ErrDiffers) {
		t.Fatalf("Verify = %v, want ErrDiffers", err)
	}
	sum := rep.Summary()
	if !strings.Contains(sum, "table accounts") || !strings.Contains(sum, "bob") || strings.Contains(sum, "alice") {
		t.Errorf("summary %q: want the accounts table with bob's row, and not alice's", sum)
	}
	if _, err := r.Swap(t.Context(), rebuild.SwapOptions{Old: "heed_old", Verify: true, Timeout: 30 * time.Second}); !errors.Is(err, rebuild.ErrDiffers) {
		t.Fatalf("Swap(Verify) = %v, want ErrDiffers", err)
	}
	if n := p.count(t, `SELECT count(*) FROM pg_namespace WHERE nspname = 'heed_old'`); n != 0 {
		t.Errorf("a swap that found a difference renamed the live schema")
	}
	if n := p.count(t, `SELECT count(*) FROM applied_positions WHERE retired_at IS NOT NULL`); n != 0 {
		t.Errorf("a swap that found a difference retired the live positions")
	}
}

// TestRebuildResumes: a rebuild stopped and opened again goes on from the
// rebuilt schema's positions, and ends equal to the live projection.
func TestRebuildResumes(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	p.startApplier(t)
	p.open(t, "o1", "alice")
	for i := range 50 {
		p.deposit(t, fmt.Sprintf("d%d", i), "alice", 1)
	}
	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), false); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	first := r.Stats().Batches
	r.Close()
	var last *ledgerv1.DepositResponse
	for i := range 50 {
		last = p.deposit(t, fmt.Sprintf("e%d", i), "alice", 2)
	}
	p.waitApplied(t, last.GetConsistencyToken())
	r = p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp after reopening: %v", err)
	}
	if s := r.Stats(); s.Applied != 50 {
		t.Errorf("the reopened rebuild applied %d events, want the 50 new ones (first run: %d batches)", s.Applied, first)
	}
	if _, err := r.Verify(t.Context(), 30*time.Second); err != nil {
		t.Errorf("Verify: %v", err)
	}
}

// TestAudit: a projection in step with its topic audits clean, a poison
// record quarantined and a duplicate suppressed included; one with an event
// skipped (their processed rows deleted) and one processed without an event (a
// row inserted by hand) diverges, and the report names both.
func TestAudit(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	p.startApplier(t)
	p.open(t, "o1", "alice")
	p.open(t, "o2", "bob")
	res := p.deposit(t, "d1", "alice", 10)
	p.produceRaw(t, p.fetchRecord(t, token(t, res.GetConsistencyToken())))    // a duplicate
	p.produceRaw(t, &kgo.Record{Key: []byte("carol"), Value: []byte("junk")}) // poison
	last := p.deposit(t, "d2", "bob", 3)
	p.waitApplied(t, last.GetConsistencyToken())
	p.waitCaughtUp(t)

	run := func() *audit.Report {
		t.Helper()
		rep, err := audit.Run(t.Context(), p.pool, audit.Config{Brokers: p.broker, Topic: p.topic, ChunkRecords: 2, Logger: testenv.Logger(t)})
		if err != nil {
			t.Fatalf("audit: %v", err)
		}
		return rep
	}
	rep := run()
	if rep.Diverged() || rep.Records != 6 || rep.Duplicates != 1 || rep.Skipped != 0 || rep.Orphans != 0 ||
		rep.Outcomes["applied"] != 4 || rep.Quarantine["poison open"] != 1 {
		rows, _ := p.pool.Query(t.Context(), `SELECT partition, "offset", kind, key, reason FROM quarantine`)
		for rows.Next() {
			v, _ := rows.Values()
			t.Logf("quarantine row %v", v)
		}
		t.Fatalf("clean projection: %+v", rep)
	}
	for _, part := range rep.Partitions {
		if part.Lag != 0 {
			t.Errorf("partition %d: lag %d after catching up", part.Partition, part.Lag)
		}
	}
	if _, err := p.pool.Exec(t.Context(), `DELETE FROM processed_events WHERE aggregate = 'bob'`); err != nil {
		t.Fatal(err)
	}
	if _, err := p.pool.Exec(t.Context(), `INSERT INTO processed_events (event_id, key_hash, aggregate, fingerprint) VALUES ('00000000-0000-4000-8000-000000000001', 7, 'ghost', 1)`); err != nil {
		t.Fatal(err)
	}
	rep = run()
	if !rep.Diverged() || rep.Skipped != 2 || len(rep.SkippedExamples) != 2 || rep.Orphans != 1 || rep.OrphanExamples[0].Aggregate != "ghost" {
		t.Fatalf("broken projection: want 2 skipped (bob's) and 1 orphan (ghost), got %+v", rep)
	}
}

// TestSwapReplacesProjectionAheadOfTopic: a live projection that holds
// records the topic no longer has (as after a broker restored from an older
// backup; here its positions are moved past the end by hand) cannot be
// caught up with; --swap replaces it at the topic's end without a
// comparison, and says so.
func TestSwapReplacesProjectionAheadOfTopic(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	live := p.startApplier(t)
	p.open(t, "o1", "alice")
	res := p.deposit(t, "d1", "alice", 10)
	p.waitApplied(t, res.GetConsistencyToken())
	live.stop(t)
	if _, err := p.pool.Exec(t.Context(), `UPDATE applied_positions SET next_offset = next_offset + 100`); err != nil {
		t.Fatal(err)
	}
	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	sw, err := r.Swap(t.Context(), rebuild.SwapOptions{Old: "heed_old", Verify: true, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatalf("Swap: %v", err)
	}
	if !sw.AheadOfTopic || sw.Report != nil {
		t.Errorf("Swap result %+v: want AheadOfTopic and no comparison", sw)
	}
	for part, end := range p.endOffsets(t) {
		var pos int64
		if err := p.pool.QueryRow(t.Context(), `SELECT next_offset FROM applied_positions WHERE topic = $1 AND partition = $2`, p.topic, part).Scan(&pos); err != nil {
			t.Fatal(err)
		}
		if pos != end {
			t.Errorf("partition %d: the swapped-in projection is at %d, want the topic's end %d", part, pos, end)
		}
	}
	if b := p.balances(t)["alice"]; b != 10 {
		t.Errorf("alice's balance %d in the swapped-in projection, want 10", b)
	}
}

// TestRebuildAheadOfLive: a rebuild run without --verify goes to the topic's
// end; while a live partition lags (its applier down), that leaves the
// rebuild past the live projection, and a replay cannot go back. A later
// verify (or swap with verify) must compare at the same positions: it waits
// for the live appliers to get there and finds the two equal, and with no
// live applier it says why it cannot compare, not that they differ. (Seen in
// the chaos suite: a rebuild killed mid-replay, resumed with --verify --swap,
// reported rows "only rebuilt" on a partition the live side had not reached.)
func TestRebuildAheadOfLive(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	live := p.startApplier(t)
	p.open(t, "open-a", "acct-a")
	p.open(t, "open-b", "acct-b")
	p.waitApplied(t, p.deposit(t, "dep-0", "acct-a", 1).GetConsistencyToken())
	p.waitCaughtUp(t)
	live.stop(t)
	for i := range 20 { // acknowledged, not applied: the live side lags
		p.deposit(t, fmt.Sprint("dep-late-", i), []string{"acct-a", "acct-b"}[i%2], 2)
	}

	const into = "heed_rebuild_ahead"
	first := p.newRebuilder(t, into)
	if _, err := first.CatchUp(t.Context(), false); err != nil { // to the topic's end
		t.Fatalf("CatchUp to the end: %v", err)
	}
	first.Close()

	r := p.newRebuilder(t, into) // resumes, past the live positions
	_, err := r.Verify(t.Context(), time.Second)
	if err == nil || errors.Is(err, rebuild.ErrDiffers) || !strings.Contains(err.Error(), "past the live projection") {
		t.Fatalf("Verify with the rebuild past the live projection and no live applier: %v; want it to say it cannot compare at the same positions", err)
	}

	p.startApplier(t)
	rep, err := r.Verify(t.Context(), 30*time.Second)
	if err != nil {
		t.Fatalf("Verify once the live applier runs again: %v", err)
	}
	if !rep.Equal() {
		t.Errorf("report: %s", rep.Summary())
	}
}
