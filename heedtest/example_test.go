package heedtest_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/heedtest"
	"github.com/heed-dev/heed/ledger"
)

// A domain's replay test: streams of opens, deposits and withdrawals over a
// few accounts, a minute of record time apart, with retries of earlier
// commands among them.
func ExampleCheckReplay() {
	_ = func(t *testing.T) { // a test of the domain's package
		heedtest.CheckReplay(t, ledger.Domain(), func(r *rand.Rand) []heedtest.Command {
			var stream []heedtest.Command
			for i := range 40 {
				acct := fmt.Sprintf("a%d", r.IntN(4))
				c := heedtest.Command{Key: acct, RequestID: fmt.Sprintf("r%d", i), At: time.Duration(i) * time.Minute}
				switch r.IntN(4) {
				case 0:
					c.Event = &ledgerv1.AccountOpened{AccountId: acct}
				case 1:
					c.Event = &ledgerv1.FundsDeposited{AccountId: acct, Amount: 1 + r.Int64N(50)}
				case 2:
					c.Event = &ledgerv1.FundsWithdrawn{AccountId: acct, Amount: 1 + r.Int64N(50)}
				default:
					if i > 0 {
						c = stream[r.IntN(i)] // a client's retry: a duplicate
					} else {
						c.Raw = []byte("junk") // quarantined; its key waits behind it
					}
				}
				stream = append(stream, c)
			}
			return stream
		}, heedtest.Streams(3), heedtest.Partitions(2))
	}
}

// A test of a domain's service, served as heed dev serves it.
func ExampleStart() {
	_ = func(t *testing.T) { // a test of the domain's package
		s := heedtest.Start(t, ledger.Domain())
		client := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, s.URL)
		res, err := client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "o1", AccountId: "alice"}))
		if err != nil {
			t.Fatal(err)
		}
		s.Await(t, res.Msg.GetConsistencyToken())
		var n int
		if err := s.Pool.QueryRow(t.Context(), `SELECT count(*) FROM accounts`).Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d accounts (%v), want 1", n, err)
		}
	}
}

func ExampleCommand_String() {
	c := heedtest.Command{Key: "a1", RequestID: "r7", Event: &ledgerv1.FundsDeposited{AccountId: "a1", Amount: 5}, At: 90 * time.Second}
	fmt.Println(c)
	fmt.Println(heedtest.Command{Key: "a2", Raw: []byte("junk")})
	// Output:
	// a1/r7 heed.ledger.v1.FundsDeposited{account_id:"a1" amount:5} @1m30s
	// a2/ raw"junk" @0s
}
