package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ledger"
)

// ledgerAccounts is how many accounts the ledger load spreads over.
const ledgerAccounts = 20

// ledgerTarget is the reference ledger, the heed binary: opens, deposits,
// withdrawals and transfers over ledgerAccounts accounts (and to accounts
// never opened), checked against the balances their recorded outcomes
// give, each transfer followed to its end, and money conserved at random
// reads during the run (transfer_test.go); with the relay's faults
// (relay_test.go).
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
	check:  checkLedger,
	faults: relayFaultKinds,
	during: watchMoney,
}

// ledgerWorker is worker w's commands: it opens some accounts first, then
// deposits (45%), withdraws (15%), transfers (30%) and opens again (10%,
// rejected when the account is open already). A transfer goes to another of
// the accounts, most of them on another partition, or one time in eight to
// an account never opened, whose credit is rejected and refunded.
func ledgerWorker(w, workers int, rng *rand.Rand) func(i int) command {
	return func(i int) command {
		from := rng.IntN(ledgerAccounts)
		c := command{requestID: fmt.Sprintf("w%d-%d", w, i), key: fmt.Sprint("acct-", from)}
		switch r := rng.IntN(20); {
		case i < ledgerAccounts/workers+1 || r < 2:
			c.kind = "open" // every worker opens some first; later opens of an existing account are rejected
			if i < ledgerAccounts/workers+1 {
				c.key = fmt.Sprint("acct-", (w+i*workers)%ledgerAccounts)
			}
		case r < 11:
			c.kind, c.amount = "deposit", int64(1+rng.IntN(100))
		case r < 14:
			c.kind, c.amount = "withdraw", int64(1+rng.IntN(150))
		default:
			c.kind, c.amount = "transfer", int64(1+rng.IntN(80))
			c.to = fmt.Sprint("acct-", (from+1+rng.IntN(ledgerAccounts-1))%ledgerAccounts)
			if rng.IntN(8) == 0 {
				c.to = fmt.Sprintf("%s%d-%d", ghostPrefix, w, i)
			}
		}
		return c
	}
}

// ghostPrefix starts the accounts transfers go to that are never opened.
const ghostPrefix = "ghost-"

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
		case "transfer":
			_, err = c.Transfer(ctx, connect.NewRequest(&ledgerv1.TransferRequest{RequestId: cmd.requestID, FromAccountId: cmd.key, ToAccountId: cmd.to, Amount: cmd.amount}))
		default:
			err = fmt.Errorf("no ledger command %q", cmd.kind)
		}
		return err
	}
}

// readBalances reads every account's balance but the probe's.
func readBalances(t *testing.T, s *stack, conn *pgx.Conn) map[string]int64 {
	t.Helper()
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
	return got
}
