package ledger_test

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// rawDeposit is a FundsDeposited record written around ingest, as any
// producer could, with amount unchecked.
func rawDeposit(t *testing.T, requestID, account string, amount int64) *kgo.Record {
	t.Helper()
	payload, err := proto.Marshal(&ledgerv1.FundsDeposited{AccountId: account, Amount: amount})
	if err != nil {
		t.Fatal(err)
	}
	v, err := proto.Marshal(&envelopev1.Envelope{
		EventId: envelope.EventID(requestID).String(), Type: "heed.ledger.v1.FundsDeposited", RequestId: requestID,
		AggregateId: account, Payload: &anypb.Any{TypeUrl: "type.googleapis.com/heed.ledger.v1.FundsDeposited", Value: payload},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Key: []byte(account), Value: v}
}

// An order-sensitive history with a poison record in it (open, junk,
// deposit 10, withdraw 4): the commands after the junk are parked, not
// applied past it, and GetCommandResult says so; once an operator drops the
// junk they apply in log order (balance 6: the withdrawal after the deposit),
// and the statuses follow. A request never sent is unknown given an applied
// token, pending without one.
func TestParkedInOrderUntilDropped(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	p.startApplier(t)
	const acct = "olga"
	p.waitApplied(t, p.open(t, "open-olga", acct).GetConsistencyToken())
	junk := p.produceRaw(t, rawDeposit(t, "junk-olga", acct, -5))[0]
	p.deposit(t, "dep-olga", acct, 10)
	wd := p.withdraw(t, "wd-olga", acct, 4)
	tok := wd.GetConsistencyToken()

	wantStatus := func(requestID, token string, want ledgerv1.CommandStatus, reason string) {
		t.Helper()
		r := p.result(t, requestID, token)
		if r.GetStatus() != want || !strings.Contains(r.GetReason(), reason) {
			t.Errorf("GetCommandResult(%s) = %v %q, want %v with %q", requestID, r.GetStatus(), r.GetReason(), want, reason)
		}
	}
	wantStatus("junk-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_QUARANTINED, "amount -5 must be greater than 0")
	wantStatus("dep-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_PARKED, "parked behind a quarantined record")
	wantStatus("wd-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_PARKED, "parked behind a quarantined record")
	wantStatus("never-sent", tok, ledgerv1.CommandStatus_COMMAND_STATUS_UNKNOWN, "never written")
	wantStatus("never-sent", "", ledgerv1.CommandStatus_COMMAND_STATUS_PENDING, "")
	if got := p.balance(t, acct, tok); got != 0 {
		t.Errorf("balance with the deposit and withdrawal parked = %d, want 0", got)
	}

	res, err := applier.Drop(t.Context(), p.pool, ledger.Applier{}, p.topic, junk.Partition, junk.Offset, "not a real deposit")
	if err != nil {
		t.Fatalf("drop: %v", err)
	}
	if res.Applied != 2 || res.Poison != -1 {
		t.Errorf("drop = %+v, want the 2 parked commands applied", res)
	}
	if got := p.balance(t, acct, tok); got != 6 {
		t.Errorf("balance after the drop = %d, want 6 (deposit 10, then withdraw 4)", got)
	}
	wantStatus("junk-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_DROPPED, "not a real deposit")
	wantStatus("dep-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED, "")
	wantStatus("wd-olga", tok, ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED, "")

	// The account is released: its next command applies directly.
	next := p.deposit(t, "dep2-olga", acct, 1)
	if got := p.balance(t, acct, next.GetConsistencyToken()); got != 7 {
		t.Errorf("balance after a later deposit = %d, want 7", got)
	}
}

// upgraded is the ledger applier of a newer binary, which knows an event type
// the running one does not: FundsDepositedV2 (a FundsDeposited payload).
type upgraded struct{ ledger.Applier }

func (u upgraded) Decode(env *envelopev1.Envelope) (any, error) {
	if env.GetType() == "heed.ledger.v1.FundsDepositedV2" {
		e := proto.Clone(env).(*envelopev1.Envelope)
		e.Type, e.Payload.TypeUrl = "heed.ledger.v1.FundsDeposited", "type.googleapis.com/heed.ledger.v1.FundsDeposited"
		return u.Applier.Decode(e)
	}
	return u.Applier.Decode(env)
}

// A rolling upgrade: a producer already writes an event type this applier
// does not know. The event is quarantined and its account's later commands
// (a withdrawal that needs its funds) are parked, not applied past it; once
// the upgraded binary re-drives it, both apply in log order.
func TestRedriveAfterUpgrade(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	p.startApplier(t)
	const acct = "pia"
	p.waitApplied(t, p.open(t, "open-pia", acct).GetConsistencyToken())
	payload, err := proto.Marshal(&ledgerv1.FundsDeposited{AccountId: acct, Amount: 100})
	if err != nil {
		t.Fatal(err)
	}
	v, err := proto.Marshal(&envelopev1.Envelope{
		EventId: envelope.EventID("dep-v2").String(), Type: "heed.ledger.v1.FundsDepositedV2", RequestId: "dep-v2", AggregateId: acct,
		Payload: &anypb.Any{TypeUrl: "type.googleapis.com/heed.ledger.v1.FundsDepositedV2", Value: payload},
	})
	if err != nil {
		t.Fatal(err)
	}
	v2 := p.produceRaw(t, &kgo.Record{Key: []byte(acct), Value: v})[0]
	wd := p.withdraw(t, "wd-pia", acct, 30)
	r := p.result(t, "wd-pia", wd.GetConsistencyToken())
	if r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_PARKED {
		t.Fatalf("withdrawal behind an unknown event type: %v %q, want PARKED (applied past it, it would be rejected for lack of funds)", r.GetStatus(), r.GetReason())
	}
	if r := p.result(t, "dep-v2", wd.GetConsistencyToken()); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_QUARANTINED || !strings.Contains(r.GetReason(), "unknown event type") {
		t.Fatalf("the unknown event: %v %q, want QUARANTINED for its unknown type", r.GetStatus(), r.GetReason())
	}

	res, err := applier.Redrive(t.Context(), p.pool, upgraded{}, p.topic, v2.Partition, v2.Offset)
	if err != nil || res.Applied != 2 || res.Poison != -1 {
		t.Fatalf("redrive with the upgraded binary = %+v, %v; want both applied", res, err)
	}
	if got := p.balance(t, acct, wd.GetConsistencyToken()); got != 70 {
		t.Errorf("balance after the re-drive = %d, want 70 (deposit 100, then withdraw 30)", got)
	}
	if r := p.result(t, "wd-pia", ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED {
		t.Errorf("the withdrawal after the re-drive: %v %q, want APPLIED", r.GetStatus(), r.GetReason())
	}
}
