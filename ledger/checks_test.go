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

	"github.com/heed-dev/heed/audit"
	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/topic"
)

// loadedPipeline is a pipeline of 4 partitions with an applier running and
// deposits flowing over 8 open accounts from 8 workers, each pausing pause
// between its deposits (a pause keeps the topic small for checks that read
// it whole); the deposit "marker" (10 to the first account) is applied
// before the load starts. It returns the count of acknowledged deposits.
func loadedPipeline(t *testing.T, pause time.Duration) (*pipeline, *runningApplier, *atomic.Int64) {
	t.Helper()
	p := newPipeline(t, pipelineOpts{partitions: 4})
	app := p.startApplier(t)
	var accounts []string
	for i := range 8 {
		acct := fmt.Sprintf("acct-%02d", i)
		accounts = append(accounts, acct)
		p.open(t, "open-"+acct, acct)
	}
	p.waitApplied(t, p.deposit(t, "marker", accounts[0], 10).GetConsistencyToken())
	p.waitCaughtUp(t)
	ctx, stop := context.WithCancel(context.Background())
	var (
		wg    sync.WaitGroup
		acked atomic.Int64
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := &ledgerv1.DepositRequest{RequestId: fmt.Sprintf("load-%d-%d", w, i), AccountId: accounts[(w+i)%len(accounts)], Amount: 1}
				if _, err := p.client.Deposit(ctx, connect.NewRequest(req)); err == nil {
					acked.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		}()
	}
	t.Cleanup(func() { stop(); wg.Wait() })
	return p, app, &acked
}

// positionsSum is the sum of the applied positions.
func (p *pipeline) positionsSum(t *testing.T) int64 {
	t.Helper()
	return p.count(t, `SELECT coalesce(sum(next_offset), 0)::bigint FROM applied_positions WHERE topic = $1`, p.topic)
}

// TestTopicCheckUnderLoad: the check that the projection is the topic's and
// not ahead of it (topic.Verify: apply at start and at each assignment, dev;
// a Guard's Check: serve) never refuses while deposits are written and
// applied, in 300 tries; with a partition's position moved past the end by
// hand (the broker lost records) both refuse at once, while records are
// still written.
func TestTopicCheckUnderLoad(t *testing.T) {
	p, app, acked := loadedPipeline(t, 0)
	ctx := t.Context()
	guard := topic.NewGuard(p.pool, p.admin, p.topic, 0, testenv.Logger(t))
	const tries = 300
	var (
		refused  int
		firstErr error
	)
	written, applied := acked.Load(), p.positionsSum(t)
	for i := range tries {
		var err error
		if i%2 == 0 {
			_, err = topic.Verify(ctx, p.pool, p.admin, p.topic)
		} else {
			err = guard.Check(ctx)
		}
		if err != nil {
			refused++
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	written, applied = acked.Load()-written, p.positionsSum(t)-applied
	t.Logf("%d checks while %d deposits were acknowledged and %d records applied", tries, written, applied)
	if written == 0 || applied == 0 {
		t.Fatalf("nothing was written (%d) or applied (%d) during the checks: the test shows nothing", written, applied)
	}
	if refused > 0 {
		t.Fatalf("%d of %d checks refused under ordinary load, e.g. %v", refused, tries, firstErr)
	}

	// A real loss, with records still written: the applier stopped, one
	// position moved far past the end.
	app.stop(t)
	if _, err := p.pool.Exec(ctx, `UPDATE applied_positions SET next_offset = next_offset + 1000000 WHERE topic = $1 AND partition = 2`, p.topic); err != nil {
		t.Fatal(err)
	}
	if _, err := topic.Verify(ctx, p.pool, p.admin, p.topic); !errors.Is(err, topic.ErrAheadOfTopic) || !strings.Contains(err.Error(), "partition 2") {
		t.Errorf("Verify with partition 2 past its end = %v, want ErrAheadOfTopic naming partition 2", err)
	}
	if err := guard.Check(ctx); !errors.Is(err, topic.ErrAheadOfTopic) || !errors.Is(guard.Admit(), topic.ErrAheadOfTopic) {
		t.Errorf("Guard with partition 2 past its end: Check = %v, Admit = %v; want both ErrAheadOfTopic", err, guard.Admit())
	}
}

// TestAuditUnderLoad: audits run while deposits are written and applied
// report no divergence (no orphan, nothing skipped, nothing ahead), in up to
// 300 tries; with a processed row deleted and one added by hand, still under
// load, the audit reports exactly those two.
func TestAuditUnderLoad(t *testing.T) {
	p, _, acked := loadedPipeline(t, 100*time.Millisecond)
	ctx := t.Context()
	run := func() *audit.Report {
		t.Helper()
		rep, err := audit.Run(ctx, p.pool, audit.Config{Brokers: p.broker, Topic: p.topic, Logger: testenv.Logger(t)})
		if err != nil {
			t.Fatalf("audit: %v", err)
		}
		return rep
	}
	// 300 audits, or as many as 30 s allow on a busy machine (at least 50):
	// each reads the whole topic, which the load keeps growing.
	const (
		most, least = 300, 50
		budget      = 30 * time.Second
	)
	var (
		tries    int
		diverged int
		first    *audit.Report
	)
	written, applied := acked.Load(), p.positionsSum(t)
	began := time.Now()
	for ; tries < most && (tries < least || time.Since(began) < budget); tries++ {
		if rep := run(); rep.Diverged() {
			diverged++
			if first == nil {
				first = rep
			}
		}
	}
	written, applied = acked.Load()-written, p.positionsSum(t)-applied
	t.Logf("%d audits in %v while %d deposits were acknowledged and %d records applied", tries, time.Since(began), written, applied)
	if written == 0 || applied == 0 {
		t.Fatalf("nothing was written (%d) or applied (%d) during the audits: the test shows nothing", written, applied)
	}
	if diverged > 0 {
		t.Fatalf("%d of %d audits diverged under ordinary load, e.g. %+v", diverged, tries, *first)
	}

	// Real divergence, under load: the marker's processed row deleted (an
	// event skipped) and a row with no event inserted (an orphan).
	if _, err := p.pool.Exec(ctx, `DELETE FROM processed_events WHERE event_id = $1`, envelope.EventID("marker")); err != nil {
		t.Fatal(err)
	}
	if _, err := p.pool.Exec(ctx, `INSERT INTO processed_events (event_id, key_hash, aggregate, fingerprint) VALUES ('00000000-0000-4000-8000-000000000001', 7, 'ghost', 1)`); err != nil {
		t.Fatal(err)
	}
	rep := run()
	if !rep.Diverged() || rep.Skipped != 1 || len(rep.SkippedExamples) != 1 || rep.SkippedExamples[0].EventID != envelope.EventID("marker").String() ||
		rep.Orphans != 1 || len(rep.OrphanExamples) != 1 || rep.OrphanExamples[0].Aggregate != "ghost" {
		t.Fatalf("audit with the marker's row deleted and a ghost row added, under load: want exactly 1 skipped (the marker) and 1 orphan (ghost), got %+v", rep)
	}
	for _, part := range rep.Partitions {
		if part.Ahead {
			t.Errorf("partition %d reported ahead of the topic under load: %+v", part.Partition, part)
		}
	}
}
