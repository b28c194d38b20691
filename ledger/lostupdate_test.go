package ledger_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/internal/testenv"
)

// One account's events in two partitions (as after a change of the partition
// count) applied by two concurrent batches that both read the same balance:
// neither write may be lost. Here both batches read 0 and then wait for a
// lock on the account's row; once it is gone, one commits and the other must
// notice that the balance moved and apply from the new one: 10 + 5 = 15.
func TestNoLostUpdateAcrossPartitions(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	app := p.startApplier(t)
	const acct = "xena"
	p.waitApplied(t, p.open(t, "open-xena", acct).GetConsistencyToken())

	lock, err := p.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(t.Context()) //nolint:errcheck // a no-op once committed
	if _, err := lock.Exec(t.Context(), `SELECT * FROM accounts WHERE account_id = $1 FOR UPDATE`, acct); err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(p.broker...), kgo.DefaultProduceTopic(p.topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i, amount := range []int64{10, 5} {
		r := rawDeposit(t, fmt.Sprint("dep-xena-", i), acct, amount)
		r.Partition = int32(i)
		if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 20*time.Second, func() string {
		var n int64
		if err := p.pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			return err.Error()
		}
		if n != 2 {
			return fmt.Sprintf("%d sessions wait for the account's lock, want both batches", n)
		}
		return ""
	})
	if err := lock.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() string {
		if got := p.balances(t)[acct]; got != 15 || app.Stats().Applied != 3 {
			return fmt.Sprintf("balance %d, stats %+v; want 15 with both deposits applied", got, app.Stats())
		}
		return ""
	})
	afters := []int64{p.balanceAfter(t, "dep-xena-0"), p.balanceAfter(t, "dep-xena-1")}
	slices.Sort(afters)
	if len(afters) != 2 || afters[1] != 15 || (afters[0] != 10 && afters[0] != 5) {
		t.Errorf("balance_after of the two deposits = %v, want one of them at 15 and the other at its own amount", afters)
	}
}
