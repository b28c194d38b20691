package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// command is one command the load sent and got acknowledged.
type command struct {
	requestID string
	account   string
	kind      string // open, deposit, withdraw
	amount    int64
}

// load sends opens, deposits and withdrawals from workers, each to a random
// server, each retried with its request ID (on any error: unavailable, a
// timeout, a connection refused by a server that is down) until
// acknowledged, and records every acknowledged command.
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	acked   []command
	retries int
	once    sync.Once
	// giveUp, once stop set it (Unix nanoseconds), is when a worker stops
	// retrying its last command; unacked then says which and why.
	giveUp  atomic.Int64
	unacked []string
}

// drainTimeout bounds how long stop waits for the commands in flight to be
// acknowledged: a stack that never takes them again fails the test, with
// the reason, instead of hanging it.
const drainTimeout = 2 * time.Minute

func startLoad(addrs []string, workers, accounts int, seed uint64) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	clients := make([]ledgerv1connect.LedgerServiceClient, len(addrs))
	for i, a := range addrs {
		clients[i] = clientFor(a)
	}
	for w := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				c := command{requestID: fmt.Sprintf("w%d-%d", w, i), account: fmt.Sprint("acct-", rng.IntN(accounts))}
				switch r := rng.IntN(10); {
				case i < accounts/workers+1 || r == 0:
					c.kind = "open" // every worker opens some first; later opens of an existing account are rejected
					if i < accounts/workers+1 {
						c.account = fmt.Sprint("acct-", (w+i*workers)%accounts)
					}
				case r < 7:
					c.kind, c.amount = "deposit", int64(1+rng.IntN(100))
				default:
					c.kind, c.amount = "withdraw", int64(1+rng.IntN(150))
				}
				// Once sent, a command is retried until acknowledged, even
				// after stop: it may have been written already.
				var err error
				for try := 0; ; try++ {
					if g := l.giveUp.Load(); try > 0 && g != 0 && time.Now().UnixNano() > g {
						l.mu.Lock()
						l.unacked = append(l.unacked, fmt.Sprintf("%s %s of %s, last error: %v", c.kind, c.requestID, c.account, err))
						l.mu.Unlock()
						return
					}
					if try > 0 {
						l.mu.Lock()
						l.retries++
						l.mu.Unlock()
						time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
					}
					if err = send(clients[rng.IntN(len(clients))], c); err == nil {
						break
					}
				}
				l.mu.Lock()
				l.acked = append(l.acked, c)
				l.mu.Unlock()
				time.Sleep(2 * time.Millisecond) // a steady load, not a flood
			}
		}()
	}
	return l
}

// clientFor is a Connect client of the server at addr.
func clientFor(addr string) ledgerv1connect.LedgerServiceClient {
	return ledgerv1connect.NewLedgerServiceClient(&http.Client{Timeout: 10 * time.Second}, "http://"+addr)
}

func send(c ledgerv1connect.LedgerServiceClient, cmd command) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	switch cmd.kind {
	case "open":
		_, err = c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: cmd.requestID, AccountId: cmd.account}))
	case "deposit":
		_, err = c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: cmd.requestID, AccountId: cmd.account, Amount: cmd.amount}))
	case "withdraw":
		_, err = c.Withdraw(ctx, connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: cmd.requestID, AccountId: cmd.account, Amount: cmd.amount}))
	}
	return err
}

// stop ends the load once every command sent is acknowledged, or
// drainTimeout has passed (see stuck), and returns the acknowledged commands
// and how many sends were retries.
func (l *load) stop() ([]command, int) {
	l.once.Do(func() {
		l.giveUp.Store(time.Now().Add(drainTimeout).UnixNano())
		l.cancel()
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked, l.retries
}

// stuck lists the commands that were not acknowledged within drainTimeout
// after stop, with the last error of each.
func (l *load) stuck() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unacked
}

// checkDrained fails t when commands were left unacknowledged, with the
// tail of every server's output: why they refused.
func checkDrained(t *testing.T, s *stack, l *load) {
	t.Helper()
	stuck := l.stuck()
	if len(stuck) == 0 {
		return
	}
	var tails []string
	for _, sl := range s.serves {
		if p := sl.running(); p != nil {
			p.mu.Lock()
			out := p.out.String()
			p.mu.Unlock()
			tails = append(tails, fmt.Sprintf("%s (last 4000 bytes):\n%s", sl.name, out[max(0, len(out)-4000):]))
		}
	}
	t.Fatalf("%d commands were not acknowledged within %v after the load stopped: %s\n%s", len(stuck), drainTimeout, strings.Join(stuck, "; "), strings.Join(tails, "\n"))
}

// stopReviving stops the load as stop does, starting again meanwhile, every
// second, each process that is down, as a supervisor would: a serve started
// while the broker was down exits at once ("list brokers: ... connection
// refused"), and the commands in flight wait for a server that takes them.
func stopReviving(s *stack, l *load) ([]command, int) {
	var (
		acked   []command
		retries int
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		acked, retries = l.stop()
	}()
	for {
		select {
		case <-done:
			return acked, retries
		case <-time.After(time.Second):
			if n := s.revive(); n > 0 {
				s.log.add("revive", fmt.Sprintf("%d processes started again while the load drained", n))
			}
		}
	}
}
