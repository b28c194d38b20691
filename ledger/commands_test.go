package ledger_test

import (
	"fmt"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// Commands go through the RPCs, are applied, and the business rules are
// decided by the applier and read back.
func TestCommandsThroughRPC(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	app := p.startApplier(t)

	p.open(t, "open-1", "alice")
	p.deposit(t, "dep-1", "alice", 500)
	w := p.withdraw(t, "wd-1", "alice", 120)
	if got := p.balance(t, "alice", w.GetConsistencyToken()); got != 380 {
		t.Fatalf("balance after open, deposit 500, withdraw 120 = %d, want 380", got)
	}
	if r := p.result(t, "wd-1", ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != 380 {
		t.Errorf("withdraw result: %v balance_after %d, want APPLIED 380", r.GetStatus(), r.GetBalanceAfter())
	}

	over := p.withdraw(t, "wd-over", "alice", 1000)
	p.wantRejected(t, "wd-over", over.GetConsistencyToken(), "insufficient funds")

	missing := p.deposit(t, "dep-missing", "bob", 10)
	p.wantRejected(t, "dep-missing", missing.GetConsistencyToken(), "does not exist")

	// Opening twice, over gRPC this time.
	res, err := p.grpc.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "open-2", AccountId: "alice"}))
	if err != nil {
		t.Fatalf("OpenAccount over gRPC: %v", err)
	}
	p.wantRejected(t, "open-2", res.Msg.GetConsistencyToken(), "already exists")

	if got := p.balance(t, "alice", res.Msg.GetConsistencyToken()); got != 380 {
		t.Errorf("balance after rejected commands = %d, want 380", got)
	}
	if _, err := p.client.GetAccount(t.Context(), connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "bob"})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("GetAccount(bob) = %v, want not_found", err)
	}
	if s := app.Stats(); s.Applied != 6 || s.Duplicates != 0 || s.Quarantined != 0 {
		t.Errorf("stats = %+v, want 6 applied, nothing else", s)
	}
}

// A retried command (same request_id, same content) has the same event ID and
// is applied once; a request_id reused for other content is quarantined as a
// conflict and not applied.
func TestIdempotentCommands(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	app := p.startApplier(t)
	p.open(t, "open", "carol")

	first := p.deposit(t, "dep-retried", "carol", 100)
	second := p.deposit(t, "dep-retried", "carol", 100)
	if first.GetEventId() != second.GetEventId() {
		t.Fatalf("retried command event IDs %s and %s differ", first.GetEventId(), second.GetEventId())
	}
	if first.GetConsistencyToken() == second.GetConsistencyToken() {
		t.Fatalf("both sends share token %s: the retry was not written", first.GetConsistencyToken())
	}
	if got := p.balance(t, "carol", second.GetConsistencyToken()); got != 100 {
		t.Errorf("balance after a deposit sent twice = %d, want 100", got)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events WHERE event_id = $1`, envelope.EventID("dep-retried")); n != 1 {
		t.Errorf("processed_events rows for the retried command = %d, want 1", n)
	}
	if s := app.Stats(); s.Duplicates != 1 || s.Applied != 2 {
		t.Errorf("stats = %+v, want 2 applied, 1 duplicate", s)
	}

	conflict := p.deposit(t, "dep-retried", "carol", 999)
	if conflict.GetEventId() != first.GetEventId() {
		t.Errorf("reused request_id gave event ID %s, want %s", conflict.GetEventId(), first.GetEventId())
	}
	if got := p.balance(t, "carol", conflict.GetConsistencyToken()); got != 100 {
		t.Errorf("balance after reusing a request_id for 999 = %d, want 100", got)
	}
	tok := token(t, conflict.GetConsistencyToken())
	var (
		kind, reason string
		eventID      uuid.UUID
	)
	err := p.pool.QueryRow(t.Context(), `SELECT kind, reason, event_id FROM quarantine WHERE partition = $1 AND "offset" = $2`, tok.Partition, tok.Offset).
		Scan(&kind, &reason, &eventID)
	if err != nil {
		t.Fatalf("read quarantine row of the conflicting command: %v", err)
	}
	if kind != "conflict" || !strings.Contains(reason, "dep-retried") || eventID.String() != first.GetEventId() {
		t.Errorf("quarantine row = (%s, %q, %s), want conflict naming dep-retried with event %s", kind, reason, eventID, first.GetEventId())
	}
	if r := p.result(t, "dep-retried", ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != 100 {
		t.Errorf("result of dep-retried = %v/%d, want the first command's APPLIED/100", r.GetStatus(), r.GetBalanceAfter())
	}
	if s := app.Stats(); s.Conflicts != 1 || s.Duplicates != 1 || s.Applied != 2 {
		t.Errorf("stats = %+v, want 2 applied, 1 duplicate, 1 conflict", s)
	}
}

// A request_id identifies a command within its account: reused for another
// account it names another command, applied in that account's partition (so
// the same on every replay, whichever partition commits first), not a
// conflict. GetCommandResult by that request_id then needs the account, and
// says so.
func TestRequestIDPerAccount(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 4})
	app := p.startApplier(t)
	accounts := []string{"ann", "bob", "cyd", "dan"} // spread over the partitions
	for _, acct := range accounts {
		p.open(t, "open-"+acct, acct)
	}
	var last string
	for i, acct := range accounts {
		last = p.deposit(t, "shared", acct, int64(10*(i+1))).GetConsistencyToken()
	}
	p.waitApplied(t, last)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Applied != 8 {
			return fmt.Sprintf("stats %+v, want 8 applied", st)
		}
		return ""
	})
	if st := app.Stats(); st.Conflicts != 0 || st.Quarantined != 0 || st.Duplicates != 0 {
		t.Errorf("stats = %+v, want no conflict, quarantine or duplicate", st)
	}
	want := map[string]int64{"ann": 10, "bob": 20, "cyd": 30, "dan": 40}
	if got := p.balances(t); !maps.Equal(got, want) {
		t.Errorf("balances = %v, want %v", got, want)
	}
	_, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
		Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: "shared"},
	}))
	if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "ann, bob, cyd, dan") || !strings.Contains(err.Error(), "account_id") {
		t.Errorf("GetCommandResult(shared) without account_id: %v, want invalid_argument listing the accounts and asking for account_id", err)
	}
	for acct, balance := range want {
		res, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
			Ref:       &ledgerv1.GetCommandResultRequest_RequestId{RequestId: "shared"},
			AccountId: acct,
		}))
		if err != nil {
			t.Fatalf("GetCommandResult(shared, %s): %v", acct, err)
		}
		if r := res.Msg; r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != balance || r.GetAccountId() != acct {
			t.Errorf("GetCommandResult(shared, %s) = %v, want APPLIED with balance_after %d", acct, r, balance)
		}
	}
	if r := p.result(t, "open-ann", ""); r.GetAccountId() != "ann" || r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED {
		t.Errorf("GetCommandResult(open-ann) without account_id = %v, want APPLIED for ann", r)
	}
}

// With the broker unreachable a command fails with unavailable within the
// produce timeout and leaves nothing behind.
func TestCommandBrokerUnavailable(t *testing.T) {
	dead := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	p := newPipeline(t, pipelineOpts{publishTo: []string{dead}, produceTimeout: time.Second})

	start := time.Now()
	_, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "r1", AccountId: "dave", Amount: 5}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("Deposit with the broker down: %v (code %v), want unavailable", err, connect.CodeOf(err))
	}
	if !strings.Contains(err.Error(), "retry with the same request_id") {
		t.Errorf("error %q does not tell the caller to retry", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Deposit took %v with a 1s produce timeout", d)
	}
	_, err = p.grpc.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "r2", AccountId: "dave"}))
	if connect.CodeOf(err) != connect.CodeUnavailable {
		t.Fatalf("OpenAccount over gRPC with the broker down: %v, want unavailable", err)
	}

	// An applier on the real broker finds nothing to apply.
	p.startApplier(t).stop(t)
	for _, table := range []string{"accounts", "processed_events", "quarantine"} {
		if n := p.count(t, "SELECT count(*) FROM "+table); n != 0 {
			t.Errorf("%s has %d rows after failed commands, want 0", table, n)
		}
	}
	for part, end := range p.endOffsets(t) {
		if end != 0 {
			t.Errorf("partition %d end offset %d, want 0", part, end)
		}
	}
}

// A malformed command is refused with invalid_argument naming the field, and
// nothing is produced.
func TestCommandValidation(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	long := strings.Repeat("x", 129)
	cases := []struct {
		name  string
		call  func() error
		field string
	}{
		{"empty request_id", func() error {
			_, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{AccountId: "a", Amount: 1}))
			return err
		}, "request_id"},
		{"long request_id", func() error {
			_, err := p.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: long, AccountId: "a"}))
			return err
		}, "request_id"},
		{"bad account_id", func() error {
			_, err := p.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "r", AccountId: "no spaces"}))
			return err
		}, "account_id"},
		{"empty account_id", func() error {
			_, err := p.client.Withdraw(t.Context(), connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: "r", Amount: 1}))
			return err
		}, "account_id"},
		{"zero amount", func() error {
			_, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "r", AccountId: "a"}))
			return err
		}, "amount"},
		{"negative amount over gRPC", func() error {
			_, err := p.grpc.Withdraw(t.Context(), connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: "r", AccountId: "a", Amount: -5}))
			return err
		}, "amount"},
		{"bad event_id", func() error {
			_, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
				Ref: &ledgerv1.GetCommandResultRequest_EventId{EventId: "not-a-uuid"}}))
			return err
		}, "event_id"},
		{"bad consistency_token", func() error {
			_, err := p.client.GetAccount(t.Context(), connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "a", ConsistencyToken: "!!"}))
			return err
		}, "consistency_token"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("got %v (code %v), want invalid_argument", err, connect.CodeOf(err))
			}
			if !strings.Contains(err.Error(), c.field) {
				t.Errorf("error %q does not name %s", err, c.field)
			}
		})
	}
	ends := p.endOffsets(t)
	if len(ends) != 2 {
		t.Fatalf("end offsets of %d partitions, want 2", len(ends))
	}
	for part, end := range ends {
		if end != 0 {
			t.Errorf("partition %d end offset %d after malformed commands, want 0", part, end)
		}
	}
}

// The event ID a command returns is envelope.EventID of its request ID.
func TestCommandEventID(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	reqID := uuid.NewString()
	res := p.open(t, reqID, "erin")
	if res.GetEventId() != reqID {
		t.Errorf("UUID request_id %s gave event ID %s, want it as is", reqID, res.GetEventId())
	}
	res2 := p.open(t, "not-a-uuid", "erin")
	if want := envelope.EventID("not-a-uuid").String(); res2.GetEventId() != want {
		t.Errorf("event ID %s, want %s", res2.GetEventId(), want)
	}
}
