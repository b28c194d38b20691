package ledger_test

import (
	"testing"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/ledger"
)

// BenchmarkDecode measures decoding one deposit's envelope into its event,
// with the ledger's rules checked: what the applier does for every record
// before the database sees it.
//
//	go test -run '^$' -bench Decode -benchmem ./ledger/
func BenchmarkDecode(b *testing.B) {
	env, err := ingest.NewEnvelope("acct-42", "deposit-1", &ledgerv1.FundsDeposited{AccountId: "acct-42", Amount: 125})
	if err != nil {
		b.Fatal(err)
	}
	h := ledger.Applier{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := h.Decode(env); err != nil {
			b.Fatal(err)
		}
	}
}
