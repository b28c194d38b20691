package ledger

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// Dropping a credit refunds it, exactly as rejecting it does; dropping a
// refund is refused; anything else drops with nothing to compensate.
func TestOnDrop(t *testing.T) {
	credit := &ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}
	st := state{}
	results, err := st.queue(t, []heed.Record{rec("bob", 1, "c1", credit)}) // bob does not exist: rejected
	if err != nil {
		t.Fatal(err)
	}
	rejected := results[0].Emits[0]
	dropped, err := onDrop(credit)
	if err != nil {
		t.Fatalf("drop a credit: %v", err)
	}
	if dropped.Name != rejected.Name || dropped.Key != rejected.Key || !proto.Equal(dropped.Event, rejected.Event) {
		t.Errorf("a dropped credit emits %v, a rejected one %v: want the same refund", dropped, rejected)
	}
	if _, err := onDrop(&ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}); !errors.Is(err, errUndroppable) {
		t.Errorf("drop a refund: %v, want refused", err)
	}
	for _, m := range []proto.Message{
		&ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob", Amount: 30},
		&ledgerv1.FundsDeposited{AccountId: "alice", Amount: 1},
		&ledgerv1.AccountOpened{AccountId: "alice"},
	} {
		if e, err := onDrop(m); err != nil || e.Event != nil {
			t.Errorf("drop %T: %v, %v; want allowed, nothing emitted", m, e, err)
		}
	}
}
