package ledger

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"

	"github.com/heed-dev/heed/command"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// GetCommandResult follows a transfer from its debit through the follow-ups
// each step's result names, to its end or to the step in flight.
func TestFollowTransfer(t *testing.T) {
	const (
		pending  = ledgerv1.TransferState_TRANSFER_STATE_PENDING
		settled  = ledgerv1.TransferState_TRANSFER_STATE_SETTLED
		refunded = ledgerv1.TransferState_TRANSFER_STATE_REFUNDED
		rejected = ledgerv1.TransferState_TRANSFER_STATE_REJECTED
		applied  = commandv1.CommandStatus_COMMAND_STATUS_APPLIED
		refused  = commandv1.CommandStatus_COMMAND_STATUS_REJECTED
		waiting  = commandv1.CommandStatus_COMMAND_STATUS_PENDING
		quarant  = commandv1.CommandStatus_COMMAND_STATUS_QUARANTINED
		dropped  = commandv1.CommandStatus_COMMAND_STATUS_DROPPED
	)
	followUpID := domain().FollowUpEventID
	debitID := uuid.MustParse("0193a8f2-0000-7000-8000-000000000001")
	creditID := followUpID(debitID, "alice", StepCredit)
	refundID := followUpID(creditID, "bob", StepRefund)
	debited := &command.Outcome{EventID: debitID, Status: applied, Key: "alice", Message: &ledgerv1.CommandResult{
		BalanceAfter: 70, TransferState: pending, Next: &ledgerv1.NextStep{Name: StepCredit, AccountId: "bob"}}}
	credited := &command.Outcome{EventID: creditID, Status: applied, Key: "bob",
		Message: &ledgerv1.CommandResult{BalanceAfter: 30, TransferState: settled}}
	creditRefused := &command.Outcome{EventID: creditID, Status: refused, Key: "bob", Reason: "account bob does not exist; refunding alice",
		Message: &ledgerv1.CommandResult{TransferState: pending, Next: &ledgerv1.NextStep{Name: StepRefund, AccountId: "alice"}}}
	refundedOK := &command.Outcome{EventID: refundID, Status: applied, Key: "alice",
		Message: &ledgerv1.CommandResult{BalanceAfter: 100, TransferState: refunded}}
	notYet := func(id uuid.UUID, key string) *command.Outcome {
		return &command.Outcome{EventID: id, Status: waiting, Key: key}
	}
	type step struct {
		name    string
		status  commandv1.CommandStatus
		account string
		balance int64
	}
	for _, tc := range []struct {
		name    string
		start   *command.Outcome
		known   map[uuid.UUID]*command.Outcome
		state   ledgerv1.TransferState
		steps   []step
		wantErr bool
	}{
		{name: "not a transfer", start: &command.Outcome{EventID: debitID, Status: applied, Message: &ledgerv1.CommandResult{BalanceAfter: 5}}},
		{name: "not decided", start: notYet(debitID, "alice")},
		{name: "debit rejected", start: &command.Outcome{EventID: debitID, Status: refused,
			Message: &ledgerv1.CommandResult{TransferState: rejected}}, state: rejected},
		{name: "credit in flight", start: debited, known: map[uuid.UUID]*command.Outcome{creditID: notYet(creditID, "bob")},
			state: pending, steps: []step{{StepCredit, waiting, "bob", 0}}},
		{name: "credit quarantined", start: debited,
			known: map[uuid.UUID]*command.Outcome{creditID: {EventID: creditID, Status: quarant, Key: "bob", Reason: "poison"}},
			state: pending, steps: []step{{StepCredit, quarant, "bob", 0}}},
		{name: "settled", start: debited, known: map[uuid.UUID]*command.Outcome{creditID: credited},
			state: settled, steps: []step{{StepCredit, applied, "bob", 30}}},
		{name: "refund in flight", start: debited, known: map[uuid.UUID]*command.Outcome{creditID: creditRefused, refundID: notYet(refundID, "alice")},
			state: pending, steps: []step{{StepCredit, refused, "bob", 0}, {StepRefund, waiting, "alice", 0}}},
		{name: "refunded", start: debited, known: map[uuid.UUID]*command.Outcome{creditID: creditRefused, refundID: refundedOK},
			state: refunded, steps: []step{{StepCredit, refused, "bob", 0}, {StepRefund, applied, "alice", 100}}},
		{name: "followed from the credit", start: creditRefused, known: map[uuid.UUID]*command.Outcome{refundID: refundedOK},
			state: refunded, steps: []step{{StepRefund, applied, "alice", 100}}},
		{name: "a step unreadable", start: debited, wantErr: true},
		{name: "credit dropped, refunded", start: debited, known: map[uuid.UUID]*command.Outcome{
			creditID: {EventID: creditID, Status: dropped, Key: "bob", Reason: "by an operator"}, refundID: refundedOK},
			state: refunded, steps: []step{{StepCredit, dropped, "bob", 0}, {StepRefund, applied, "alice", 100}}},
		{name: "credit dropped, refund in flight", start: debited, known: map[uuid.UUID]*command.Outcome{
			creditID: {EventID: creditID, Status: dropped, Key: "bob"}, refundID: notYet(refundID, "alice")},
			state: pending, steps: []step{{StepCredit, dropped, "bob", 0}, {StepRefund, waiting, "alice", 0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			get := func(_ context.Context, ref command.Ref) (*command.Outcome, error) {
				o, ok := tc.known[uuid.MustParse(ref.EventID)]
				if !ok {
					return nil, fmt.Errorf("no outcome for %s", ref.EventID)
				}
				if ref.Key != o.Key {
					return nil, fmt.Errorf("asked for %s of %q, recorded for %q", ref.EventID, ref.Key, o.Key)
				}
				return o, nil
			}
			out := &ledgerv1.GetCommandResultResponse{}
			err := followTransfer(t.Context(), get, followUpID, tc.start, out)
			if (err != nil) != tc.wantErr {
				t.Fatalf("followTransfer: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if out.GetTransferState() != tc.state {
				t.Errorf("state %v, want %v", out.GetTransferState(), tc.state)
			}
			if len(out.GetSteps()) != len(tc.steps) {
				t.Fatalf("steps %v, want %v", out.GetSteps(), tc.steps)
			}
			for i, s := range out.GetSteps() {
				w := tc.steps[i]
				if s.GetName() != w.name || s.GetStatus() != ledgerv1.CommandStatus(w.status) || s.GetAccountId() != w.account || s.GetBalanceAfter() != w.balance {
					t.Errorf("step %d: %v, want %+v", i, s, w)
				}
				if want := tc.known[uuid.MustParse(s.GetEventId())]; want == nil || want.Reason != s.GetReason() {
					t.Errorf("step %d: event ID %s or reason %q not the follow-up's", i, s.GetEventId(), s.GetReason())
				}
			}
		})
	}
}
