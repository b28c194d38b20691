package ledger_test

import (
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// Issue 26, hole 6: a request_id reused with other content (d1: 100, then
// d1: 999) is acknowledged with the same event ID, and was answered APPLIED
// with the first command's balance even given the second command's own
// consistency token. Given that token, GetCommandResult answers CONFLICT with
// the reason, by request_id or event_id, with or without the account; the
// first command keeps its own answer, with its token or without one; and a
// later retry of the first command (same content) is not a conflict.
func TestReusedRequestIDReported(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	p.startApplier(t)
	const acct = "dora"
	p.open(t, "open-dora", acct)
	first := p.deposit(t, "d1", acct, 100)
	reused := p.deposit(t, "d1", acct, 999)
	retry := p.deposit(t, "d1", acct, 100)
	if reused.GetEventId() != first.GetEventId() {
		t.Fatalf("reused request_id gave event ID %s, want the first's %s", reused.GetEventId(), first.GetEventId())
	}
	p.waitApplied(t, retry.GetConsistencyToken())

	get := func(req *ledgerv1.GetCommandResultRequest) *ledgerv1.GetCommandResultResponse {
		t.Helper()
		res, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(req))
		if err != nil {
			t.Fatalf("GetCommandResult(%v): %v", req, err)
		}
		return res.Msg
	}
	byRequest := &ledgerv1.GetCommandResultRequest_RequestId{RequestId: "d1"}
	byEvent := &ledgerv1.GetCommandResultRequest_EventId{EventId: first.GetEventId()}
	conflicts := []struct {
		name string
		req  *ledgerv1.GetCommandResultRequest
	}{
		{"request_id", &ledgerv1.GetCommandResultRequest{Ref: byRequest, ConsistencyToken: reused.GetConsistencyToken()}},
		{"request_id and account", &ledgerv1.GetCommandResultRequest{Ref: byRequest, ConsistencyToken: reused.GetConsistencyToken(), AccountId: acct}},
		{"event_id", &ledgerv1.GetCommandResultRequest{Ref: byEvent, ConsistencyToken: reused.GetConsistencyToken()}},
	}
	for _, c := range conflicts {
		t.Run("reused/"+c.name, func(t *testing.T) {
			r := get(c.req)
			if r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_CONFLICT || !strings.Contains(r.GetReason(), `request_id "d1" was reused with different content`) {
				t.Errorf("the reusing command: %v %q, want CONFLICT saying request_id d1 was reused", r.GetStatus(), r.GetReason())
			}
			if r.GetEventId() != first.GetEventId() || r.GetAccountId() != acct || r.GetBalanceAfter() != 0 {
				t.Errorf("the reusing command: event %s account %q balance %d, want event %s, account %s, no balance",
					r.GetEventId(), r.GetAccountId(), r.GetBalanceAfter(), first.GetEventId(), acct)
			}
		})
	}
	applied, unknown := ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED, ledgerv1.CommandStatus_COMMAND_STATUS_UNKNOWN
	firsts := []struct {
		name string
		req  *ledgerv1.GetCommandResultRequest
		want ledgerv1.CommandStatus
	}{
		{"its own token", &ledgerv1.GetCommandResultRequest{Ref: byRequest, ConsistencyToken: first.GetConsistencyToken()}, applied},
		{"no token", &ledgerv1.GetCommandResultRequest{Ref: byRequest}, applied},
		{"the retry's token", &ledgerv1.GetCommandResultRequest{Ref: byRequest, ConsistencyToken: retry.GetConsistencyToken()}, applied},
		{"event_id and its own token", &ledgerv1.GetCommandResultRequest{Ref: byEvent, ConsistencyToken: first.GetConsistencyToken()}, applied},
		// The conflict is dora's command d1: another account's d1 is not it.
		{"another account, the reused token", &ledgerv1.GetCommandResultRequest{Ref: byRequest, ConsistencyToken: reused.GetConsistencyToken(), AccountId: "nobody"}, unknown},
	}
	for _, c := range firsts {
		t.Run(c.name, func(t *testing.T) {
			r := get(c.req)
			if r.GetStatus() != c.want || (c.want == applied && r.GetBalanceAfter() != 100) {
				t.Errorf("GetCommandResult(%v) = %v balance %d %q, want %v (the first command's: balance 100)", c.req, r.GetStatus(), r.GetBalanceAfter(), r.GetReason(), c.want)
			}
		})
	}
	if got := p.balance(t, acct, retry.GetConsistencyToken()); got != 100 {
		t.Errorf("balance = %d, want 100: only the first d1 applies", got)
	}
}

// A command reusing a request_id, parked behind a poison record, is
// answered PARKED given its token, saying it reuses the request_id, while a
// parked retry of the first command (same content) is answered as the first
// one, APPLIED. Once an operator drops the poison record, the reusing command
// is a conflict, answered as such, and the retry a duplicate.
func TestReusedRequestIDParkedThenReported(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	p.startApplier(t)
	const acct = "ezra"
	p.open(t, "open-ezra", acct)
	first := p.deposit(t, "d1", acct, 100)
	p.waitApplied(t, first.GetConsistencyToken())
	junk := p.produceRaw(t, rawDeposit(t, "junk-ezra", acct, -5))[0]
	reused := p.deposit(t, "d1", acct, 999)
	retry := p.deposit(t, "d1", acct, 100)
	if r := p.result(t, "junk-ezra", retry.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_QUARANTINED {
		t.Fatalf("the junk record: %v %q, want QUARANTINED", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "d1", reused.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_PARKED ||
		!strings.Contains(r.GetReason(), "parked behind") || !strings.Contains(r.GetReason(), "reuses the request_id") {
		t.Errorf("the parked reusing command: %v %q, want PARKED, saying it reuses the request_id", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "d1", retry.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != 100 {
		t.Errorf("the parked retry of the first command: %v balance %d %q, want the first's APPLIED at 100", r.GetStatus(), r.GetBalanceAfter(), r.GetReason())
	}

	res, err := applier.Drop(t.Context(), p.pool, ledger.Applier{}, p.topic, junk.Partition, junk.Offset, "junk")
	if err != nil || res.Conflicts != 1 || res.Duplicates != 1 || res.Applied != 0 {
		t.Fatalf("drop = %+v, %v; want the parked commands found a conflict and a duplicate", res, err)
	}
	if r := p.result(t, "d1", reused.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_CONFLICT {
		t.Errorf("the reusing command after the drop: %v %q, want CONFLICT", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "d1", first.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED || r.GetBalanceAfter() != 100 {
		t.Errorf("the first command: %v balance %d, want APPLIED at 100", r.GetStatus(), r.GetBalanceAfter())
	}
	if got := p.balances(t)[acct]; got != 100 {
		t.Errorf("balance = %d, want 100", got)
	}
}
