package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ledger"
)

// ledgerAccounts is how many accounts the ledger load spreads over.
const ledgerAccounts = 20

// ledgerTarget is the reference ledger, the heed binary: opens, deposits and
// withdrawals over ledgerAccounts accounts, checked against the balances
// their recorded outcomes give.
var ledgerTarget = &target{
	name:   "ledger",
	pkg:    "./cmd/heed",
	dom:    ledger.Domain(),
	short:  30 * time.Second,
	pause:  2 * time.Millisecond,
	client: ledgerClient,
	probe: func(server string) command {
		return command{requestID: "probe-" + server, key: "probe", kind: "open"}
	},
	worker: ledgerWorker,
	check:  checkBalances,
}

// ledgerWorker is worker w's commands: it opens some accounts first, then
// deposits (70%), withdraws (20%) and opens again (10%, rejected when the
// account is open already).
func ledgerWorker(w, workers int, rng *rand.Rand) func(i int) command {
	return func(i int) command {
		c := command{requestID: fmt.Sprintf("w%d-%d", w, i), key: fmt.Sprint("acct-", rng.IntN(ledgerAccounts))}
		switch r := rng.IntN(10); {
		case i < ledgerAccounts/workers+1 || r == 0:
			c.kind = "open" // every worker opens some first; later opens of an existing account are rejected
			if i < ledgerAccounts/workers+1 {
				c.key = fmt.Sprint("acct-", (w+i*workers)%ledgerAccounts)
			}
		case r < 7:
			c.kind, c.amount = "deposit", int64(1+rng.IntN(100))
		default:
			c.kind, c.amount = "withdraw", int64(1+rng.IntN(150))
		}
		return c
	}
}

// ledgerClient sends ledger commands to the server at addr over Connect.
func ledgerClient(addr string) sender {
	c := ledgerv1connect.NewLedgerServiceClient(httpClient, "http://"+addr)
	return func(ctx context.Context, cmd command) error {
		var err error
		switch cmd.kind {
		case "open":
			_, err = c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: cmd.requestID, AccountId: cmd.key}))
		case "deposit":
			_, err = c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: cmd.requestID, AccountId: cmd.key, Amount: cmd.amount}))
		case "withdraw":
			_, err = c.Withdraw(ctx, connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: cmd.requestID, AccountId: cmd.key, Amount: cmd.amount}))
		default:
			err = fmt.Errorf("no ledger command %q", cmd.kind)
		}
		return err
	}
}

// checkBalances checks that the balances equal the model the acknowledged
// commands' recorded outcomes give.
func checkBalances(t *testing.T, s *stack, acked []command, outcomes []outcome) string {
	t.Helper()
	model := map[string]int64{} // accounts opened, with their balances
	for i, c := range acked {
		if outcomes[i] != applied {
			continue
		}
		switch c.kind {
		case "open":
			model[c.key] += 0
		case "deposit":
			model[c.key] += c.amount
		case "withdraw":
			model[c.key] -= c.amount
		}
	}
	conn := s.connect(t)
	rows, err := conn.Query(t.Context(), `SELECT account_id, balance FROM `+s.table("accounts")+` WHERE account_id <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for rows.Next() {
		var (
			a string
			b int64
		)
		if err := rows.Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		got[a] = b
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, model) {
		t.Errorf("balances %v, want %v (the model from the recorded outcomes)", got, model)
	}
	return fmt.Sprintf("%d accounts", len(got))
}
