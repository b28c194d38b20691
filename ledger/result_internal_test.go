package ledger

import (
	"bytes"
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// commandResult writes by hand what proto.Marshal writes for a CommandResult.
func TestCommandResultIsProtobuf(t *testing.T) {
	for _, balance := range []int64{0, 1, 127, 128, 300, 1 << 40, math.MaxInt64} {
		want, err := proto.Marshal(&ledgerv1.CommandResult{BalanceAfter: balance})
		if err != nil {
			t.Fatal(err)
		}
		if got := commandResult(balance); !bytes.Equal(got, want) {
			t.Errorf("commandResult(%d) = %x, proto.Marshal = %x", balance, got, want)
		}
	}
}
