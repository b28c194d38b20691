package cli

import (
	"bytes"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

// runOnce runs heed in-process with args to its end and returns its exit code, stdout and
// stderr.
func runOnce(tb testing.TB, args ...string) (int, string, string) {
	tb.Helper()
	var stdout, stderr bytes.Buffer
	code := run(tb.Context(), args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestQuarantineVerb drives `heed quarantine` as an operator would: a record
// written around ingest that can never apply (a deposit of -5) parks the
// account's next deposit; list shows both, show prints the record, redrive
// finds it still poison, drop (which needs a reason) releases the account and
// applies the parked deposit.
func TestQuarantineVerb(t *testing.T) {
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	runDev(t, devArgs(addrs, t.TempDir(), dbURL)...)
	ctx := t.Context()
	c := ledgerClient(addrs.listen)
	open, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "q-open", AccountId: "quinn"}))
	if err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	balance(t, c, "quinn", open.Msg.GetConsistencyToken())

	env, err := ingest.NewEnvelope("quinn", "q-junk", &ledgerv1.FundsDeposited{AccountId: "quinn", Amount: -5})
	if err != nil {
		t.Fatal(err)
	}
	junk, err := ingest.NewRecord(env)
	if err != nil {
		t.Fatal(err)
	}
	produceKeyed(t, addrs.broker, junk)
	dep, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "q-dep", AccountId: "quinn", Amount: 30}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	res, err := c.GetCommandResult(ctx, connect.NewRequest(&ledgerv1.GetCommandResultRequest{
		Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: "q-dep"}, ConsistencyToken: dep.Msg.GetConsistencyToken()}))
	if err != nil {
		t.Fatalf("GetCommandResult: %v", err)
	}
	if res.Msg.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_PARKED {
		t.Fatalf("deposit after the junk: %v %q, want PARKED", res.Msg.GetStatus(), res.Msg.GetReason())
	}

	db := []string{"--database-url", dbURL}
	pos := []string{"--brokers", addrs.broker, "--partition", fmt.Sprint(junk.Partition), "--offset", fmt.Sprint(junk.Offset)}
	code, out, errOut := runOnce(t, append([]string{"quarantine", "list"}, db...)...)
	if code != 0 || !strings.Contains(out, "poison") || !strings.Contains(out, "parked") || !strings.Contains(out, "amount -5 must be greater than 0") {
		t.Errorf("quarantine list: code %d\n%s%s\nwant the poison record and the parked deposit", code, out, errOut)
	}
	code, out, errOut = runOnce(t, append(append([]string{"quarantine", "show"}, db...), pos...)...)
	if code != 0 || !strings.Contains(out, `"requestId":"q-junk"`) || !strings.Contains(out, "kind      poison") {
		t.Errorf("quarantine show: code %d\n%s%s\nwant the record with its envelope", code, out, errOut)
	}
	code, out, errOut = runOnce(t, append(append([]string{"quarantine", "redrive"}, db...), pos...)...)
	if code != 0 || !strings.Contains(out, "still cannot apply") || !strings.Contains(out, "1 records stay parked") {
		t.Errorf("quarantine redrive of a record that is still poison: code %d\n%s%s", code, out, errOut)
	}
	code, _, errOut = runOnce(t, append(append([]string{"quarantine", "drop"}, db...), pos...)...)
	if code != 1 || !strings.Contains(errOut, "drop needs --reason") {
		t.Errorf("quarantine drop without --reason: code %d, stderr %q; want 1 asking for --reason", code, errOut)
	}
	code, out, errOut = runOnce(t, append(append([]string{"quarantine", "drop", "--reason", "bad producer, ticket 7"}, db...), pos...)...)
	if code != 0 || !strings.Contains(out, "1 applied") || !strings.Contains(out, "the key is released") {
		t.Errorf("quarantine drop: code %d\n%s%s", code, out, errOut)
	}
	if got := balance(t, c, "quinn", dep.Msg.GetConsistencyToken()); got != 30 {
		t.Errorf("balance after the drop = %d, want 30", got)
	}
	// The re-drive and the drop are records of the topic, carried out by
	// the applier: a rebuild replays them and reaches the same projection.
	code, out, errOut = runOnce(t, append([]string{"rebuild", "--brokers", addrs.broker, "--verify"}, db...)...)
	if code != 0 || !strings.Contains(out+errOut, "verified") {
		t.Errorf("heed rebuild --verify after a re-drive and a drop: code %d\n%s%s", code, out, errOut)
	}
	// A decision about a record that is no longer open is refused before
	// anything is written.
	code, _, errOut = runOnce(t, append(append([]string{"quarantine", "redrive"}, db...), pos...)...)
	if code != 1 || !strings.Contains(errOut, "no open quarantined or parked record") {
		t.Errorf("quarantine redrive of a dropped record: code %d, stderr %q; want 1, not open", code, errOut)
	}
	code, _, errOut = runOnce(t, "quarantine", "--database-url", dbURL)
	if code != 2 || !strings.Contains(errOut, "list, show, redrive, drop") {
		t.Errorf("quarantine without an action: code %d, stderr %q; want 2 naming the actions", code, errOut)
	}
}
