package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
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
}

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
				for try := 0; ; try++ {
					if try > 0 {
						l.mu.Lock()
						l.retries++
						l.mu.Unlock()
						time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
					}
					if send(clients[rng.IntN(len(clients))], c) == nil {
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

// stop ends the load once every command sent is acknowledged, and returns
// them and how many sends were retries.
func (l *load) stop() ([]command, int) {
	l.once.Do(func() {
		l.cancel()
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked, l.retries
}
