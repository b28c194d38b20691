package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
)

// member is an applier of the pipeline's group with a pool of its own, whose
// sessions carry name as their application_name, so that the test sees in
// pg_stat_activity which member's batch waits.
func (p *pipeline) member(t *testing.T, name string, grace time.Duration, serverSide bool) *applier.Applier {
	t.Helper()
	cfg := p.pool.Config().Copy()
	cfg.ConnConfig.RuntimeParams["application_name"] = name
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	a, err := applier.New(applier.Config{
		Brokers: p.broker, Topic: p.topic, Group: p.group, MaxBatchRecords: 16,
		ShutdownGrace: grace, ServerSideGroup: serverSide, Logger: testenv.Logger(t).With("member", name),
	}, pool, ledger.Applier{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%s: %v", name, err)
		}
	})
	return a
}

// lockWaiters counts the sessions of member name waiting for a lock.
func (p *pipeline) lockWaiters(t *testing.T, name string) int64 {
	t.Helper()
	return p.count(t, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1 AND wait_event_type = 'Lock'`, name)
}

// A partition revoked while its batch is in flight is handed over only once
// that batch has ended (committed or rolled back): the next owner starts
// from the position the batch left, never from one it is still moving
// (issue 26 item 9, invariant 6). Member a's batches of both partitions wait
// on their position rows, which the test holds locked; member b joins and is
// given one of them. b's first batch may begin only after a's batch of that
// partition ended (here rolled back, when a's grace ran out with the lock
// still held). Then the lock goes: had b begun while a's batch still waited,
// a's batch would commit first and b's compare-and-set would find the
// position moved under it (a stale batch). Every deposit applies once.
func TestRevocationWaitsForInFlightBatch(t *testing.T) {
	for _, c := range []struct {
		name       string
		serverSide bool
	}{{"classic", false}, {"consumer", true}} {
		t.Run(c.name, func(t *testing.T) {
			p := newPipeline(t, pipelineOpts{partitions: 2})
			const grace = 6 * time.Second
			a := p.member(t, "member-a", grace, c.serverSide)
			const accounts = 8
			var last []string
			for i := range accounts {
				last = append(last, p.open(t, fmt.Sprint("open-", i), fmt.Sprint("acct-", i)).GetConsistencyToken())
			}
			for _, tok := range last {
				p.waitApplied(t, tok)
			}
			if parts := p.count(t, `SELECT count(DISTINCT partition) FROM applied_positions WHERE next_offset > 0`); parts != 2 {
				t.Fatalf("the accounts are on %d partitions, want both", parts)
			}

			lock, err := p.pool.Begin(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Rollback(context.Background()) //nolint:errcheck // a no-op once committed
			if _, err := lock.Exec(t.Context(), `SELECT * FROM applied_positions FOR UPDATE`); err != nil {
				t.Fatal(err)
			}
			for i := range accounts {
				if _, _, err := p.pub.Publish(t.Context(), fmt.Sprint("acct-", i), fmt.Sprint("dep-", i), &ledgerv1.FundsDeposited{AccountId: fmt.Sprint("acct-", i), Amount: 1}); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, 20*time.Second, func() string {
				if n := p.lockWaiters(t, "member-a"); n != 2 {
					return fmt.Sprintf("%d of member a's batches wait on the position rows, want both partitions'", n)
				}
				return ""
			})

			b := p.member(t, "member-b", grace, c.serverSide)
			testenv.Eventually(t, 4*grace, func() string {
				if n := p.lockWaiters(t, "member-b"); n != 1 {
					return fmt.Sprintf("%d of member b's batches wait on the position rows, want the revoked partition's", n)
				}
				return ""
			})
			if err := lock.Commit(t.Context()); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 20*time.Second, func() string {
				want := map[string]int64{}
				for i := range accounts {
					want[fmt.Sprint("acct-", i)] = 1
				}
				got := p.balances(t)
				for k, v := range want {
					if got[k] != v {
						return fmt.Sprintf("balances %v, want 1 each", got)
					}
				}
				return ""
			})
			sa, sb := a.Stats(), b.Stats()
			if sa.Stale+sb.Stale != 0 {
				t.Errorf("stale batches: a %d, b %d; want none: b began from a position a's in-flight batch was still moving", sa.Stale, sb.Stale)
			}
			if sa.Applied+sb.Applied != 2*accounts || sa.Duplicates+sb.Duplicates != 0 || sb.Applied == 0 {
				t.Errorf("stats a %+v, b %+v: want %d applied in all, b some of them, no duplicate", sa, sb, 2*accounts)
			}
			if n := p.count(t, `SELECT count(*) FROM processed_events`); n != 2*accounts {
				t.Errorf("processed rows = %d, want %d", n, 2*accounts)
			}
		})
	}
}
