package bench

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// event is one ledger event of a benchmark's log, with the rows applying it
// writes: its processed_events row (id, fingerprint), its command_results row
// (balanceAfter) and its share of the account's balance (amount).
type event struct {
	account      string
	requestID    string
	id           uuid.UUID
	fingerprint  int64
	amount       int64 // 0 for an open
	balanceAfter int64
	value        []byte // the envelope as produced to the topic
}

// dataset is a log of opens for every account, then deposits of 1 spread
// round-robin over them, in the order the topic holds them.
type dataset struct {
	accounts int
	events   []event
}

// accountName is the ID of account i.
func accountName(i int) string { return fmt.Sprintf("acct-%d", i) }

// newDataset builds accounts opens then deposits deposits. Request IDs are
// UUIDv7s, as a client that follows the README sends them, so event IDs are
// time-ordered.
func newDataset(accounts, deposits int) (*dataset, error) {
	d := &dataset{accounts: accounts, events: make([]event, 0, accounts+deposits)}
	for i := range accounts {
		if err := d.add(accountName(i), &ledgerv1.AccountOpened{AccountId: accountName(i)}, 0, 0); err != nil {
			return nil, err
		}
	}
	balances := make([]int64, accounts)
	for i := range deposits {
		a := i % accounts
		balances[a]++
		if err := d.add(accountName(a), &ledgerv1.FundsDeposited{AccountId: accountName(a), Amount: 1}, 1, balances[a]); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *dataset) add(account string, ev proto.Message, amount, balanceAfter int64) error {
	requestID := uuid.Must(uuid.NewV7()).String()
	value, env, err := envelopeBytes(account, requestID, ev)
	if err != nil {
		return err
	}
	d.events = append(d.events, event{
		account:      account,
		requestID:    requestID,
		id:           envelope.EventID(requestID),
		fingerprint:  envelope.Fingerprint(env),
		amount:       amount,
		balanceAfter: balanceAfter,
		value:        value,
	})
	return nil
}

// envelopeBytes wraps ev as ingest.Publisher does.
func envelopeBytes(account, requestID string, ev proto.Message) ([]byte, *envelopev1.Envelope, error) {
	payload := new(anypb.Any)
	if err := anypb.MarshalFrom(payload, ev, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, nil, fmt.Errorf("marshal event: %w", err)
	}
	env := &envelopev1.Envelope{
		EventId:     envelope.EventID(requestID).String(),
		Type:        string(ev.ProtoReflect().Descriptor().FullName()),
		RequestId:   requestID,
		AggregateId: account,
		Payload:     payload,
	}
	v, err := proto.Marshal(env)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal envelope: %w", err)
	}
	return v, env, nil
}

// deposits sums the amounts of the dataset's events.
func (d *dataset) deposits() int64 {
	var n int64
	for _, e := range d.events {
		n += e.amount
	}
	return n
}

// records returns the dataset as records keyed by account, then every
// hundredth deposit again at the end of the log (1% duplicates, as a producer
// retry or a replayed range would add). It returns the number of duplicates.
func (d *dataset) records() ([]*kgo.Record, int) {
	recs := make([]*kgo.Record, 0, len(d.events)+len(d.events)/100+1)
	for _, e := range d.events {
		recs = append(recs, &kgo.Record{Key: []byte(e.account), Value: e.value})
	}
	dups := 0
	for i := d.accounts; i < len(d.events); i += 100 {
		e := d.events[i]
		recs = append(recs, &kgo.Record{Key: []byte(e.account), Value: e.value})
		dups++
	}
	return recs, dups
}
