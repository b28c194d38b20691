package heedtest_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/heedtest"
	"github.com/heed-dev/heed/ledger"
)

// ledgerStream draws opens, deposits and withdrawals (often overdrawing)
// over a few accounts (some never opened), resends of earlier commands
// (duplicates), request IDs reused with other content (conflicts), junk
// records (quarantined, parking their account), with record times that
// mostly move on and sometimes jump back.
func ledgerStream(r *rand.Rand) []heedtest.Command {
	var out []heedtest.Command
	var at time.Duration
	for i := range 30 {
		acct := fmt.Sprintf("a%d", r.IntN(6))
		c := heedtest.Command{Key: acct, RequestID: fmt.Sprintf("r%d", i)}
		switch n := r.IntN(100); {
		case n < 20:
			c.Event = &ledgerv1.AccountOpened{AccountId: acct}
		case n < 55:
			c.Event = &ledgerv1.FundsDeposited{AccountId: acct, Amount: 1 + r.Int64N(50)}
		case n < 80:
			c.Event = &ledgerv1.FundsWithdrawn{AccountId: acct, Amount: 1 + r.Int64N(80)}
		case n < 90 && len(out) > 0:
			c = out[r.IntN(len(out))] // a duplicate: same request ID, same event
		case n < 96 && len(out) > 0:
			c = out[r.IntN(len(out))] // a conflict: same request ID, another event
			if c.Event != nil {
				c.Event = proto.Clone(c.Event)
				if dep, ok := c.Event.(*ledgerv1.FundsDeposited); ok {
					dep.Amount++
				}
			}
		default:
			c.Raw = []byte("not an event")
		}
		if r.IntN(10) == 0 {
			at -= time.Duration(r.Int64N(int64(time.Hour)))
		} else {
			at += time.Duration(r.Int64N(int64(time.Minute)))
		}
		c.At = at
		out = append(out, c)
	}
	return out
}

// The reference ledger (the batched form) builds the same state live and
// rebuilt.
func TestCheckReplayLedger(t *testing.T) {
	heedtest.CheckReplay(t, ledger.Domain(), ledgerStream, heedtest.Streams(2))
}
