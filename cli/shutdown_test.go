package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/internal/testenv"
)

// shutdownTimeout is the --shutdown-timeout the processes of
// TestGracefulShutdown run with; a process must be gone within it plus
// shutdownSlack (committing offsets and leaving the group).
const (
	shutdownTimeout = 5 * time.Second
	shutdownSlack   = 5 * time.Second
)

// TestGracefulShutdown drives `heed broker`, `heed serve` and `heed apply` as
// processes under a steady load of deposits, each retried with its request ID
// until acknowledged:
//   - SIGTERM on apply: it exits 0 within the bound, with the group's
//     committed offsets equal to the applied positions in Postgres, and the
//     group left (no member);
//   - with a batch that cannot commit (its position locked): SIGTERM waits
//     the shutdown timeout, rolls the batch back and exits 0; SIGTERM twice
//     exits at once;
//   - SIGTERM on serve mid-load: it exits 0 within the bound; the callers'
//     retries reach a new serve;
//
// and at the end every acknowledged deposit is applied exactly once.
func TestGracefulShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t)
	began := time.Now()
	ps := startParts(t, bin, "--partitions", "4")
	dbURL, brokerAddr, listen := ps.dbURL, ps.brokerAddr, ps.listen
	common := append(ps.common, "--shutdown-timeout", shutdownTimeout.String())
	startServe := func() *process {
		return startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", listen}, common...)...)
	}
	startApply := func() *process {
		return startHeedLog(t, bin, "partitions assigned", append([]string{"apply"}, common...)...)
	}
	serve := startServe()
	apply := startApply()

	client := ledgerClient(listen)
	const accounts = 8
	load := startDeposits(t, client, accounts)
	defer load.stop()

	// SIGTERM on apply, under load.
	time.Sleep(time.Second)
	took := terminate(t, apply, 1)
	if took > shutdownTimeout+shutdownSlack {
		t.Errorf("apply took %v to exit after SIGTERM, want at most %v", took, shutdownTimeout+shutdownSlack)
	}
	if !strings.Contains(apply.stderr.String(), "applier stopped") {
		t.Errorf("apply's log does not say it stopped:\n%s", apply.stderr.String())
	}
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	checkOffsetsCommitted(t, admin, pool)

	// A batch that cannot commit (its position row locked): SIGTERM waits
	// the timeout for it, rolls it back and exits 0; a second SIGTERM exits
	// at once.
	for _, signals := range []int{1, 2} {
		apply = startApply()
		time.Sleep(500 * time.Millisecond)
		lock, err := pool.Begin(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := lock.Exec(t.Context(), `SELECT * FROM heed.applied_positions FOR UPDATE`); err != nil {
			t.Fatal(err)
		}
		// The load keeps coming: a batch's compare-and-set soon waits on the
		// lock (not any lock wait: a start's first bind may wait a moment).
		testenv.Eventually(t, 15*time.Second, func() string {
			var waiting int64
			if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE 'UPDATE applied_positions SET next_offset%'`).Scan(&waiting); err != nil {
				return err.Error()
			}
			if waiting == 0 {
				return "no batch of apply waits on the locked positions yet"
			}
			return ""
		})
		took := terminate(t, apply, signals)
		if err := lock.Rollback(t.Context()); err != nil {
			t.Fatal(err)
		}
		switch {
		case signals == 1 && (took < shutdownTimeout || took > shutdownTimeout+shutdownSlack):
			t.Errorf("apply with a stuck batch took %v to exit after SIGTERM, want the shutdown timeout %v (and at most %v more)", took, shutdownTimeout, shutdownSlack)
		case signals == 2 && took > 2*time.Second:
			t.Errorf("apply with a stuck batch took %v to exit after a second SIGTERM, want it at once", took)
		}
	}

	// SIGTERM on serve, under load; a new serve takes the callers' retries.
	apply = startApply()
	time.Sleep(500 * time.Millisecond)
	if took := terminate(t, serve, 1); took > shutdownTimeout+shutdownSlack {
		t.Errorf("serve took %v to exit after SIGTERM, want at most %v", took, shutdownTimeout+shutdownSlack)
	}
	serve = startServe()
	time.Sleep(time.Second)

	acked := load.stop()
	if acked == 0 {
		t.Fatal("the load got no deposit acknowledged")
	}
	waitDepositsApplied(t, pool, accounts, acked, 30*time.Second)
	t.Logf("after %v: %d deposits acknowledged through three SIGTERMs of apply, a double SIGTERM and a SIGTERM of serve; each applied once", time.Since(began).Round(time.Second), acked)
	_ = serve
}

// terminate sends SIGTERM to p signals times, 100 ms apart, and returns how
// long p took to exit after the first. One signal must give exit code 0;
// more may end it by the signal.
func terminate(t *testing.T, p *process, signals int) time.Duration {
	t.Helper()
	start := time.Now()
	for i := range signals {
		if i > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("send SIGTERM: %v", err)
		}
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("heed %s did not exit within 30s of SIGTERM\nstderr:\n%s", p.cmd.Args[1], p.stderr.String())
	}
	took := time.Since(start)
	if signals == 1 && p.err != nil {
		t.Fatalf("heed %s exited with %v after SIGTERM, want exit code 0\nstderr:\n%s", p.cmd.Args[1], p.err, p.stderr.String())
	}
	return took
}

// checkOffsetsCommitted checks, with no applier running, that the group's
// committed offset of every partition is the applied position in Postgres
// and that the group has no member left.
func checkOffsetsCommitted(t *testing.T, admin *kgo.Client, pool *pgxpool.Pool) {
	t.Helper()
	adm := kadm.NewClient(admin)
	offs, err := adm.FetchOffsets(t.Context(), defaultGroup)
	if err != nil {
		t.Fatalf("fetch the group's offsets: %v", err)
	}
	rows, err := pool.Query(t.Context(), `SELECT partition, next_offset FROM heed.applied_positions WHERE topic = $1`, defaultTopic)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			p    int32
			next int64
		)
		if err := rows.Scan(&p, &next); err != nil {
			t.Fatal(err)
		}
		n++
		got, ok := offs.Lookup(defaultTopic, p)
		if next > 0 && (!ok || got.At != next) {
			t.Errorf("partition %d: committed offset %v, applied position %d; want them equal after a graceful stop", p, got.At, next)
		}
	}
	if n == 0 {
		t.Error("no applied position in the database")
	}
	groups, err := adm.DescribeGroups(t.Context(), defaultGroup)
	if err != nil {
		t.Fatalf("describe the group: %v", err)
	}
	if g := groups[defaultGroup]; len(g.Members) != 0 {
		t.Errorf("the group still has %d members after apply stopped, want it left", len(g.Members))
	}
}

// startDeposits opens accounts through c and starts a load of deposits to
// them from four callers.
func startDeposits(t *testing.T, c ledgerv1connect.LedgerServiceClient, accounts int) *load {
	t.Helper()
	for i := range accounts {
		if _, err := c.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: fmt.Sprint("open-", i), AccountId: fmt.Sprint("acct-", i)})); err != nil {
			t.Fatalf("OpenAccount: %v", err)
		}
	}
	return startLoad(c, accounts, 4)
}

// waitDepositsApplied waits until the opens and the acked deposits of 1 are
// each applied once: as many processed events, balances summing to acked.
func waitDepositsApplied(t *testing.T, pool *pgxpool.Pool, accounts int, acked int64, within time.Duration) {
	t.Helper()
	testenv.Eventually(t, within, func() string {
		var processed, sum int64
		if err := pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM heed.processed_events), (SELECT coalesce(sum(balance), 0) FROM heed.accounts)`).Scan(&processed, &sum); err != nil {
			return err.Error()
		}
		if processed != int64(accounts)+acked || sum != acked {
			return fmt.Sprintf("%d events processed and balances summing to %d, want %d and %d (each acknowledged deposit once)", processed, sum, int64(accounts)+acked, acked)
		}
		return ""
	})
}

// load sends deposits of 1 from workers goroutines, round-robin over the
// accounts, each retried with its request ID until acknowledged.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	acked  int64
	once   sync.Once
}

func startLoad(c ledgerv1connect.LedgerServiceClient, accounts, workers int) *load {
	return startLoadPrefix(c, "dep", accounts, workers)
}

// startLoadPrefix is startLoad with request IDs starting with prefix, so that
// loads on several servers send distinct commands.
func startLoadPrefix(c ledgerv1connect.LedgerServiceClient, prefix string, accounts, workers int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				req := &ledgerv1.DepositRequest{RequestId: fmt.Sprintf("%s-%d-%d", prefix, w, i), AccountId: fmt.Sprint("acct-", (w+i)%accounts), Amount: 1}
				// Once sent, a deposit is retried until acknowledged, even
				// after stop: it may have been written already.
				for {
					rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
					_, err := c.Deposit(rctx, connect.NewRequest(req))
					rcancel()
					if err == nil {
						l.mu.Lock()
						l.acked++
						l.mu.Unlock()
						time.Sleep(5 * time.Millisecond) // a steady load, not a flood
						break
					}
					if code := connect.CodeOf(err); code != connect.CodeUnavailable && code != connect.CodeDeadlineExceeded && !errors.Is(err, context.DeadlineExceeded) {
						time.Sleep(50 * time.Millisecond) // a refused connection while serve restarts comes as unavailable too
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	return l
}

// stop ends the load once every deposit sent is acknowledged and returns how
// many were.
func (l *load) stop() int64 {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked
}
