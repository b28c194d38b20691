package ledger

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/applier"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// transferResult writes by hand what proto.Marshal writes for a
// CommandResult of a transfer's step.
func TestTransferResultIsProtobuf(t *testing.T) {
	next := heed.FollowUp(StepCredit, "bob", &ledgerv1.TransferCredited{})
	for _, balance := range []int64{0, 1, 300, math.MaxInt64} {
		for _, state := range []ledgerv1.TransferState{ledgerv1.TransferState_TRANSFER_STATE_PENDING, ledgerv1.TransferState_TRANSFER_STATE_REJECTED} {
			for _, emit := range []heed.Emit{{}, next} {
				m := &ledgerv1.CommandResult{BalanceAfter: balance, TransferState: state}
				if emit.Event != nil {
					m.Next = &ledgerv1.NextStep{Name: emit.Name, AccountId: emit.Key}
				}
				want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				if err != nil {
					t.Fatal(err)
				}
				if got := transferResult(balance, state, emit); !bytes.Equal(got, want) {
					t.Errorf("transferResult(%d, %v, %q) = %x, proto.Marshal = %x", balance, state, emit.Name, got, want)
				}
			}
		}
	}
}

// state is the accounts a test's batches decide against: balances of the
// accounts that exist.
type state map[string]int64

// queue decides events against st as one batch (Load's read stood in for by
// st), applies the changes to st and returns the results, or Queue's error
// (st then unchanged).
func (st state) queue(tb testing.TB, events []heed.Record) ([]heed.Result, error) {
	tb.Helper()
	l := &loaded{accounts: map[string]*account{}, done: true}
	for _, ev := range events {
		if _, ok := l.accounts[ev.AggregateID]; ok {
			continue
		}
		a := &account{}
		if b, ok := st[ev.AggregateID]; ok {
			a.balance, a.exists, a.read, a.stored = b, true, b, true
		}
		l.accounts[ev.AggregateID] = a
	}
	results, err := l.Queue(events, &pgx.Batch{})
	if err != nil {
		return nil, err
	}
	for id, a := range l.accounts {
		if a.exists {
			st[id] = a.balance
		}
	}
	return results, nil
}

// rec is a record of payload keyed by key, at offset, with an event ID
// derived from name.
func rec(key string, offset int64, name string, payload proto.Message) heed.Record {
	return heed.Record{
		ID: domain().IDs().EventID(name), RequestID: name, AggregateID: key, Offset: offset,
		Type: string(payload.ProtoReflect().Descriptor().FullName()), Payload: payload,
	}
}

func resultOf(tb testing.TB, r heed.Result) *ledgerv1.CommandResult {
	tb.Helper()
	m := &ledgerv1.CommandResult{}
	if err := proto.Unmarshal(r.Data, m); err != nil {
		tb.Fatal(err)
	}
	return m
}

// Each step of a transfer decided on its own: what it does to its account,
// its result and the follow-up it emits.
func TestDecideTransferSteps(t *testing.T) {
	const (
		pending  = ledgerv1.TransferState_TRANSFER_STATE_PENDING
		settled  = ledgerv1.TransferState_TRANSFER_STATE_SETTLED
		refunded = ledgerv1.TransferState_TRANSFER_STATE_REFUNDED
		rejected = ledgerv1.TransferState_TRANSFER_STATE_REJECTED
	)
	debit := &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}
	credit := &ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}
	refund := &ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}
	for _, tc := range []struct {
		name    string
		before  state
		ev      heed.Record
		after   state
		reason  string // "" applied
		state   ledgerv1.TransferState
		emit    heed.Emit
		balance int64
	}{
		{name: "debit", before: state{"alice": 100}, ev: rec("alice", 1, "t1", debit),
			after: state{"alice": 70}, state: pending, balance: 70, emit: heed.FollowUp(StepCredit, "bob", credit)},
		{name: "debit of everything", before: state{"alice": 30}, ev: rec("alice", 1, "t1", debit),
			after: state{"alice": 0}, state: pending, balance: 0, emit: heed.FollowUp(StepCredit, "bob", credit)},
		{name: "debit, insufficient funds", before: state{"alice": 29}, ev: rec("alice", 1, "t1", debit),
			after: state{"alice": 29}, reason: "insufficient funds: balance 29, transfer 30", state: rejected, balance: 29},
		{name: "debit of an unknown source", before: state{}, ev: rec("alice", 1, "t1", debit),
			after: state{}, reason: "account alice does not exist", state: rejected},
		{name: "credit", before: state{"bob": 5}, ev: rec("bob", 1, "c1", credit),
			after: state{"bob": 35}, state: settled, balance: 35},
		{name: "credit of an unknown destination", before: state{}, ev: rec("bob", 1, "c1", credit),
			after: state{}, reason: "account bob does not exist; refunding alice", state: pending,
			emit: heed.FollowUp(StepRefund, "alice", refund)},
		{name: "credit that would overflow", before: state{"bob": math.MaxInt64 - 29}, ev: rec("bob", 1, "c1", credit),
			after:  state{"bob": math.MaxInt64 - 29},
			reason: fmt.Sprintf("transfer of 30 would overflow the balance %d; refunding alice", int64(math.MaxInt64-29)),
			state:  pending, balance: math.MaxInt64 - 29, emit: heed.FollowUp(StepRefund, "alice", refund)},
		{name: "refund", before: state{"alice": 70}, ev: rec("alice", 1, "r1", refund),
			after: state{"alice": 100}, state: refunded, balance: 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := maps(tc.before)
			results, err := st.queue(t, []heed.Record{tc.ev})
			if err != nil {
				t.Fatal(err)
			}
			r := results[0]
			if r.Rejected != (tc.reason != "") || r.Reason != tc.reason {
				t.Errorf("rejected %v %q, want %q", r.Rejected, r.Reason, tc.reason)
			}
			if !equalState(st, tc.after) {
				t.Errorf("accounts %v, want %v", st, tc.after)
			}
			res := resultOf(t, r)
			if res.GetBalanceAfter() != tc.balance || res.GetTransferState() != tc.state {
				t.Errorf("result %v, want balance %d, state %v", res, tc.balance, tc.state)
			}
			switch {
			case tc.emit.Event == nil && len(r.Emits) != 0:
				t.Errorf("emits %v, want none", r.Emits)
			case tc.emit.Event != nil && (len(r.Emits) != 1 || r.Emits[0].Name != tc.emit.Name ||
				r.Emits[0].Key != tc.emit.Key || !proto.Equal(r.Emits[0].Event, tc.emit.Event)):
				t.Errorf("emits %v, want %v", r.Emits, tc.emit)
			case tc.emit.Event != nil && (res.GetNext().GetName() != tc.emit.Name || res.GetNext().GetAccountId() != tc.emit.Key):
				t.Errorf("result's next %v, want %s to %s", res.GetNext(), tc.emit.Name, tc.emit.Key)
			}
		})
	}
}

func maps(s state) state {
	out := state{}
	for k, v := range s {
		out[k] = v
	}
	return out
}

func equalState(a, b state) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// A refund that cannot apply is quarantined, never rejected: the money would
// be lost.
func TestRefundThatCannotApplyIsQuarantined(t *testing.T) {
	refund := &ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 30}
	for name, before := range map[string]state{
		"overflow":       {"alice": math.MaxInt64 - 29},
		"unknown source": {},
	} {
		t.Run(name, func(t *testing.T) {
			st := maps(before)
			open := rec("carol", 6, "o1", &ledgerv1.AccountOpened{AccountId: "carol"})
			_, err := st.queue(t, []heed.Record{open, rec("alice", 7, "r1", refund)})
			var ee *applier.EventError
			if !errors.As(err, &ee) || ee.Offset != 7 {
				t.Fatalf("Queue: %v, want the quarantine of the refund at offset 7", err)
			}
			if applier.Classify(err) != applier.Poison {
				t.Errorf("Classify(%v) = %v, want poison", err, applier.Classify(err))
			}
			if !equalState(st, before) {
				t.Errorf("accounts %v changed, want %v", st, before)
			}
		})
	}
}

// The rules Domain gives transfer records: a record breaking them is
// quarantined before it is decided.
func TestTransferChecks(t *testing.T) {
	h := domain().Handler()
	for _, tc := range []struct {
		name string
		key  string
		msg  proto.Message
		ok   bool
	}{
		{"debit", "alice", &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, true},
		{"debit keyed by the destination", "bob", &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, false},
		{"debit to itself", "alice", &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "alice", Amount: 1}, false},
		{"debit of nothing", "alice", &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob"}, false},
		{"debit to a bad account", "alice", &ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "b b", Amount: 1}, false},
		{"credit", "bob", &ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, true},
		{"credit keyed by the source", "alice", &ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, false},
		{"credit of a negative amount", "bob", &ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: -1}, false},
		{"refund", "alice", &ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, true},
		{"refund keyed by the destination", "bob", &ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := h.Decode(envelopeOf(t, tc.key, tc.msg))
			if (err == nil) != tc.ok {
				t.Errorf("Decode: %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// The decisions of a stream of transfers, deposits and withdrawals between
// accounts, with follow-ups delivered late and in batches cut anywhere (as
// they would reach other partitions): the same stream decided twice gives the
// same results and emits, byte for byte; at every batch's end, balances plus
// the follow-ups in flight equal deposits minus withdrawals; once drained,
// every applied debit ended exactly once, settled or refunded.
func TestTransfersConserveMoney(t *testing.T) {
	for seed := range uint64(30) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			first := runTransfers(t, seed)
			second := runTransfers(t, seed)
			if !slices.Equal(first, second) {
				t.Fatalf("the same stream decided twice differs")
			}
		})
	}
}

// runTransfers decides the stream of seed, checking conservation, and
// returns a trace of every result and emit, marshaled.
func runTransfers(t *testing.T, seed uint64) []string {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	accounts := []string{"a0", "a1", "a2", "a3", "a4"} // a4 is never opened
	st := state{}
	var (
		pending   []heed.Record // commands and follow-ups not decided yet
		inFlight  = map[uuid.UUID]int64{}
		net       int64 // deposits - withdrawals applied
		ended     = map[uuid.UUID]int{}
		originOf  = map[uuid.UUID]uuid.UUID{}
		debits    []uuid.UUID
		trace     []string
		offset    int64
		commandNo int
		ends      = map[ledgerv1.TransferState]int{}
	)
	for _, a := range accounts[:4] {
		offset++
		pending = append(pending, rec(a, offset, "open-"+a, &ledgerv1.AccountOpened{AccountId: a}))
	}
	for round := 0; round < 60 || len(pending) > 0; round++ {
		for i := 0; round < 60 && i < 3; i++ {
			commandNo++
			offset++
			from, to := accounts[rng.IntN(len(accounts))], accounts[rng.IntN(len(accounts))]
			amount := 1 + rng.Int64N(50)
			name := fmt.Sprintf("cmd-%d", commandNo)
			var m proto.Message
			switch r := rng.IntN(10); {
			case r < 3:
				m = &ledgerv1.FundsDeposited{AccountId: from, Amount: amount}
			case r < 4:
				m = &ledgerv1.FundsWithdrawn{AccountId: from, Amount: amount}
			case from == to:
				continue
			default:
				m = &ledgerv1.TransferDebited{FromAccountId: from, ToAccountId: to, Amount: amount}
			}
			pending = append(pending, rec(from, offset, name, m))
		}
		// A batch of a random slice of what is pending, in order; the rest
		// waits (a follow-up on another partition, applied later).
		if len(pending) == 0 {
			continue
		}
		n := 1 + rng.IntN(len(pending))
		batch := pending[:n]
		pending = slices.Clone(pending[n:])
		results, err := st.queue(t, batch)
		if err != nil {
			t.Fatal(err)
		}
		for i, ev := range batch {
			r := results[i]
			res := resultOf(t, r)
			trace = append(trace, fmt.Sprintf("%s %v %q %x", ev.ID, r.Rejected, r.Reason, r.Data))
			delete(inFlight, ev.ID)
			switch p := ev.Payload.(type) {
			case *ledgerv1.FundsDeposited:
				if !r.Rejected {
					net += p.GetAmount()
				}
			case *ledgerv1.FundsWithdrawn:
				if !r.Rejected {
					net -= p.GetAmount()
				}
			case *ledgerv1.TransferDebited:
				if !r.Rejected {
					debits = append(debits, ev.ID)
					originOf[ev.ID] = ev.ID
				}
			}
			if s := res.GetTransferState(); s == ledgerv1.TransferState_TRANSFER_STATE_SETTLED || s == ledgerv1.TransferState_TRANSFER_STATE_REFUNDED {
				ended[originOf[ev.ID]]++
				ends[s]++
			}
			for _, e := range r.Emits {
				b, err := proto.MarshalOptions{Deterministic: true}.Marshal(e.Event)
				if err != nil {
					t.Fatal(err)
				}
				trace = append(trace, fmt.Sprintf("emit %s %s %x", e.Name, e.Key, b))
				id := domain().FollowUpEventID(ev.ID, ev.AggregateID, e.Name)
				originOf[id] = originOf[ev.ID]
				offset++
				fu := heed.Record{ID: id, AggregateID: e.Key, Offset: offset, Payload: e.Event,
					Type: string(e.Event.ProtoReflect().Descriptor().FullName())}
				pending = append(pending, fu)
				switch m := e.Event.(type) {
				case *ledgerv1.TransferCredited:
					inFlight[id] = m.GetAmount()
				case *ledgerv1.TransferRefunded:
					inFlight[id] = m.GetAmount()
				}
			}
		}
		if got, want := conserved(st, inFlight), net; got != want {
			t.Fatalf("round %d: balances plus in flight = %d, deposits minus withdrawals = %d", round, got, want)
		}
	}
	if len(inFlight) != 0 {
		t.Fatalf("drained, yet in flight: %v", inFlight)
	}
	for _, id := range debits {
		if ended[id] != 1 {
			t.Errorf("transfer %s ended %d times, want once", id, ended[id])
		}
	}
	if ends[ledgerv1.TransferState_TRANSFER_STATE_SETTLED] == 0 || ends[ledgerv1.TransferState_TRANSFER_STATE_REFUNDED] == 0 {
		t.Fatalf("the stream's transfers ended %v: want some settled and some refunded", ends)
	}
	return trace
}

// conserved is the ledger's money as a reader would count it: every balance
// plus the amounts of transfers in flight (debited, not yet credited or
// refunded). It equals deposits minus withdrawals at every instant.
func conserved(balances state, inFlight map[uuid.UUID]int64) int64 {
	var sum int64
	for _, b := range balances {
		sum += b
	}
	for _, a := range inFlight {
		sum += a
	}
	return sum
}

// envelopeOf is the envelope of msg keyed by key, as ingest writes it.
func envelopeOf(tb testing.TB, key string, msg proto.Message) *envelopev1.Envelope {
	tb.Helper()
	payload, err := anypb.New(msg)
	if err != nil {
		tb.Fatal(err)
	}
	return &envelopev1.Envelope{
		EventId: uuid.NewString(), Type: string(msg.ProtoReflect().Descriptor().FullName()),
		RequestId: "r", AggregateId: key, Payload: payload,
	}
}
