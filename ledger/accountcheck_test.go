package ledger_test

import (
	"fmt"
	"testing"
	"time"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// The account check (accounts_written, migration 00002_account_check) fails a
// batch whose write of an account touched no row because another transaction
// wrote the account since the batch read it. That is a conflict between
// transactions, not the event's fault: it must be classified transient (the
// batch retried as it is, from the new balance), never as caused by the event,
// which would isolate the deposit and quarantine an innocent command once it
// failed alone twice (issue 26 item 9). Here a trigger the test installs makes
// every write of ivan's account touch no row, as if another writer always got
// there first: the deposit waits, retried, nothing is quarantined; once the
// trigger is gone it applies, once.
func TestAccountCheckConflictRetriedNotQuarantined(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	app := p.startApplier(t)
	const acct = "ivan"
	p.waitApplied(t, p.open(t, "open-ivan", acct).GetConsistencyToken())
	ctx := t.Context()
	if _, err := p.pool.Exec(ctx, `CREATE FUNCTION test_lose_account_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER test_lose_account_write BEFORE UPDATE ON accounts FOR EACH ROW WHEN (OLD.account_id = 'ivan') EXECUTE FUNCTION test_lose_account_write()`); err != nil {
		t.Fatalf("install the trigger: %v", err)
	}
	before := app.Stats().Retries
	dep := p.deposit(t, "dep-ivan", acct, 10)
	// Enough failed attempts for a deposit blamed on itself to be isolated
	// and then quarantined (it is at its second lone failure), or until it is.
	testenv.Eventually(t, 30*time.Second, func() string {
		if n := app.Stats().Retries - before; n < 4 && p.count(t, `SELECT count(*) FROM quarantine`) == 0 {
			return fmt.Sprintf("%d failed attempts at the deposit's batch, want 4", n)
		}
		return ""
	})
	if n := p.count(t, `SELECT count(*) FROM quarantine`); n != 0 {
		t.Fatalf("%d records quarantined for the account check's conflict, want none: it is not the event's fault", n)
	}
	if r := p.result(t, "dep-ivan", ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_PENDING {
		t.Fatalf("the deposit while its account's write conflicts: %v %q, want PENDING (retried)", r.GetStatus(), r.GetReason())
	}

	if _, err := p.pool.Exec(ctx, `DROP TRIGGER test_lose_account_write ON accounts`); err != nil {
		t.Fatalf("drop the trigger: %v", err)
	}
	if got := p.balance(t, acct, dep.GetConsistencyToken()); got != 10 {
		t.Errorf("balance once the conflict is gone = %d, want 10", got)
	}
	if r := p.result(t, "dep-ivan", dep.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != 10 {
		t.Errorf("the deposit: %v balance %d %q, want APPLIED at 10", r.GetStatus(), r.GetBalanceAfter(), r.GetReason())
	}
	if n := p.count(t, `SELECT count(*) FROM quarantine`); n != 0 {
		t.Errorf("%d records quarantined, want none", n)
	}
	if s := app.Stats(); s.Quarantined != 0 || s.Applied != 2 {
		t.Errorf("stats = %+v, want 2 applied, none quarantined", s)
	}
}
