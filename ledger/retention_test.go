package ledger_test

import (
	"testing"
	"time"

	"github.com/heed-dev/heed/audit"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/retention"
)

// TestRetention: the safe cutoff keeps the ID of an event whose duplicate
// still waits in the topic, however old; pruning past the horizon leaves an
// audit clean (the pruned events counted as such) and a rebuild equal to the
// live projection; and a command retried after its ID was pruned is a new
// command, applied again, as docs/REPLAY.md says.
func TestRetention(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	live := p.startApplier(t)
	p.open(t, "o1", "alice")
	d1 := p.deposit(t, "d1", "alice", 10)
	p.waitApplied(t, d1.GetConsistencyToken())
	cfg := retention.Config{Brokers: p.broker, Topic: p.topic, Retention: time.Hour, Logger: testenv.Logger(t)}

	// A duplicate of d1 waits in the topic, written three hours ago (a
	// producer's timestamp), with the applier stopped.
	live.stop(t)
	dup := p.fetchRecord(t, token(t, d1.GetConsistencyToken()))
	dup.Timestamp = time.Now().Add(-3 * time.Hour)
	p.produceRaw(t, dup)
	cutoff, err := retention.Cutoff(t.Context(), p.pool, cfg, time.Now())
	if err != nil {
		t.Fatalf("Cutoff: %v", err)
	}
	if want := time.Now().Add(-4 * time.Hour); cutoff.After(want.Add(time.Second)) {
		t.Fatalf("cutoff %v with a record of 3h ago not applied: want Retention (1h) before it, %v", cutoff, want)
	}
	if n, err := retention.Prune(t.Context(), p.pool, cutoff, 0); err != nil || n != 0 {
		t.Fatalf("Prune(%v) = %d, %v: want nothing pruned", cutoff, n, err)
	}
	p.startApplier(t)
	p.waitCaughtUp(t)
	if b := p.balances(t)["alice"]; b != 10 {
		t.Fatalf("alice's balance %d after the old duplicate, want 10: the duplicate was applied", b)
	}

	// Past the horizon: every processed ID goes.
	n, err := retention.Prune(t.Context(), p.pool, time.Now().Add(time.Minute), 1)
	if err != nil || n != 2 {
		t.Fatalf("Prune(now) = %d, %v: want the 2 processed events", n, err)
	}
	rep, err := audit.Run(t.Context(), p.pool, audit.Config{Brokers: p.broker, Topic: p.topic})
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	if rep.Diverged() || rep.Skipped != 0 || rep.Pruned != 3 {
		t.Errorf("audit after pruning: want not diverged, 0 skipped, 3 pruned (open, d1 and its duplicate): %+v", rep)
	}
	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if _, err := r.Verify(t.Context(), 30*time.Second); err != nil {
		t.Errorf("Verify after pruning: %v (the rebuild holds the pruned rows; rows before the cutoff are not compared)", err)
	}

	// A retry after the horizon is a new command.
	again := p.deposit(t, "d1", "alice", 10)
	if got := p.balance(t, "alice", again.GetConsistencyToken()); got != 20 {
		t.Errorf("alice's balance %d after retrying d1 past the horizon, want 20 (applied again)", got)
	}
}
