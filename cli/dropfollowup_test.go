package cli

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

// A quarantined follow-up cannot be dropped: a refund that cannot apply (it
// would overflow the source's balance) is quarantined, and `heed quarantine
// drop` refuses it, writing nothing, since dropping a follow-up would skip
// what its domain owes; the record stays open.
func TestQuarantineDropRefusesFollowUp(t *testing.T) {
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	runDev(t, devArgs(addrs, t.TempDir(), dbURL)...)
	ctx := t.Context()
	c := ledgerClient(addrs.listen)
	open, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "f-open", AccountId: "fay"}))
	if err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	dep, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "f-dep", AccountId: "fay", Amount: math.MaxInt64 - 5}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	balance(t, c, "fay", open.Msg.GetConsistencyToken())
	balance(t, c, "fay", dep.Msg.GetConsistencyToken())

	// The refund a rejected credit would emit, as the relay writes it.
	rid := applier.FollowUpRequestID(uuid.MustParse("0193a8f2-0000-7000-8000-0000000000aa"), "gus", "refund")
	env, err := ingest.NewEnvelope("fay", rid, &ledgerv1.TransferRefunded{FromAccountId: "fay", ToAccountId: "gus", Amount: 30})
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ingest.NewRecord(env)
	if err != nil {
		t.Fatal(err)
	}
	produceKeyed(t, addrs.broker, rec)
	db := []string{"--database-url", dbURL}
	testenv.Eventually(t, 20*time.Second, func() string {
		if _, out, _ := runOnce(t, append([]string{"quarantine", "list"}, db...)...); !strings.Contains(out, "poison") {
			return "the refund is not quarantined yet:\n" + out
		}
		return ""
	})
	pos := []string{"--brokers", addrs.broker, "--partition", fmt.Sprint(rec.Partition), "--offset", fmt.Sprint(rec.Offset), "--reason", "try"}
	code, out, errOut := runOnce(t, append(append([]string{"quarantine", "drop"}, db...), pos...)...)
	if code != 1 || !strings.Contains(errOut, "refusing to drop") || !strings.Contains(errOut, "is a follow-up") {
		t.Errorf("quarantine drop of a follow-up: exit %d\nstdout:\n%s\nstderr:\n%s\nwant 1, refusing", code, out, errOut)
	}
	if _, out, _ := runOnce(t, append([]string{"quarantine", "list"}, db...)...); !strings.Contains(out, "open") && !strings.Contains(out, "poison") {
		t.Errorf("after the refused drop the refund is no longer listed open:\n%s", out)
	}
}
