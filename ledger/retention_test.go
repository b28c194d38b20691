package ledger_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/audit"
	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/retention"
)

// TestRetention: whether a retried command is a duplicate is decided by the
// dedup window in record time, the same live and in a rebuild, before and
// after pruning (issue 26, hole 2): a retry within the window is a
// duplicate however old its own timestamp; a retry later than the window
// after its first record is a new command, applied again, live and in the
// rebuild alike, whether its row was pruned or not. The cutoff never prunes
// a row a waiting record could still find, and pruning leaves an audit clean
// and a rebuild equal to the live projection.
func TestRetention(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 1, window: time.Hour})
	live := p.startApplier(t)
	cfg := retention.Config{Topic: p.topic, Logger: testenv.Logger(t)}
	threeHoursAgo := time.Now().Add(-3 * time.Hour)
	old := func(rid, account string, amount int64) string {
		t.Helper()
		var msg = rawRecord(t, rid, account, &ledgerv1.AccountOpened{AccountId: account})
		if amount > 0 {
			msg = rawRecord(t, rid, account, &ledgerv1.FundsDeposited{AccountId: account, Amount: amount})
		}
		msg.Timestamp = threeHoursAgo
		p.produceRaw(t, msg)
		return consistency.Token{Partition: msg.Partition, Offset: msg.Offset}.String()
	}
	// carl's account and deposit, written three hours ago.
	old("o-carl", "carl", 0)
	carlD1 := old("carl-d1", "carl", 10)
	p.waitCaughtUp(t)
	if n, err := prune(t, p, cfg); err != nil || n != 0 {
		t.Fatalf("prune with only records of 3h ago applied: %d, %v; want nothing (the partition's record time is 3h ago)", n, err)
	}

	// alice's deposit now, and a duplicate of it written three hours ago
	// (a producer's clock): its record time is the partition's, now, so it
	// is within the window of the deposit.
	p.open(t, "o1", "alice")
	d1 := p.deposit(t, "d1", "alice", 10)
	p.waitApplied(t, d1.GetConsistencyToken())
	live.stop(t)
	dup := p.fetchRecord(t, token(t, d1.GetConsistencyToken()))
	dup.Timestamp = threeHoursAgo
	p.produceRaw(t, dup)
	cutoff, ok, err := retention.Cutoff(t.Context(), p.pool, cfg)
	if err != nil || !ok || cutoff.After(time.Now().Add(-time.Hour)) {
		t.Fatalf("Cutoff = %v, %v, %v: want at least the window (1h) before now", cutoff, ok, err)
	}
	// carl's rows are older than the window before every partition's
	// record time: they go.
	if n, err := prune(t, p, cfg); err != nil || n != 2 {
		t.Fatalf("prune = %d, %v: want carl's 2 rows", n, err)
	}
	p.startApplier(t)
	p.waitCaughtUp(t)
	if b := p.balances(t)["alice"]; b != 10 {
		t.Fatalf("alice's balance %d after the old duplicate, want 10: the duplicate was applied", b)
	}

	// carl-d1's outcome is gone: with its token, GetCommandResult says
	// expired; without, pending with a reason that says to pass it; with
	// another command's token, unknown.
	if r := p.result(t, "carl-d1", carlD1); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_EXPIRED || !strings.Contains(r.GetReason(), "dedup window (1h0m0s") {
		t.Errorf("carl-d1 with its token after pruning: %v %q, want EXPIRED naming the window", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "carl-d1", ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_PENDING || !strings.Contains(r.GetReason(), "pass the command's consistency token") {
		t.Errorf("carl-d1 without a token after pruning: %v %q, want PENDING saying to pass the token", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "carl-d1", d1.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_UNKNOWN {
		t.Errorf("carl-d1 with alice's token: %v %q, want UNKNOWN", r.GetStatus(), r.GetReason())
	}

	// carl's deposit retried now, 3h after its record: past the window, a
	// new command, applied again; the rebuild (which holds carl's first row)
	// decides the same.
	again := p.deposit(t, "carl-d1", "carl", 10)
	if got := p.balance(t, "carl", again.GetConsistencyToken()); got != 20 {
		t.Errorf("carl's balance %d after retrying carl-d1 past the window, want 20 (applied again)", got)
	}
	p.waitCaughtUp(t)
	rep, err := audit.Run(t.Context(), p.pool, audit.Config{Brokers: p.broker, Topic: p.topic})
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	if rep.Diverged() || rep.Skipped != 0 {
		t.Errorf("audit after pruning: want not diverged, 0 skipped: %+v", rep)
	}
	r := p.newRebuilder(t, "heed_rebuild")
	if _, err := r.CatchUp(t.Context(), true); err != nil {
		t.Fatalf("CatchUp: %v", err)
	}
	if _, err := r.Verify(t.Context(), 30*time.Second); err != nil {
		t.Errorf("Verify after pruning: %v", err)
	}
}

// prune prunes the pipeline's projection once.
func prune(t *testing.T, p *pipeline, cfg retention.Config) (int64, error) {
	t.Helper()
	_, n, err := retention.Once(t.Context(), p.pool, cfg)
	return n, err
}
