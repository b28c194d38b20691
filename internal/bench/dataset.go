package bench

import (
	"fmt"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
)

// event is one ledger event of a benchmark's log, with what applying it
// writes: its processed_events row (id, fingerprint, balanceAfter) and its
// share of the account's balance (amount).
type event struct {
	account      string
	requestID    string
	id           uuid.UUID
	fingerprint  int64
	amount       int64 // 0 for an open
	balanceAfter int64
	rec          kgo.Record // as ingest produces it; copy it before producing
}

// dataset is a log of opens for every account, then deposits of 1 spread
// round-robin over them, in the order the topic holds them.
type dataset struct {
	accounts int
	events   []event
}

// accountName is the ID of account i.
func accountName(i int) string { return fmt.Sprintf("acct-%d", i) }

// Request IDs: random (UUIDv4, or any name, which heed hashes into a UUIDv5),
// as most clients send them, or time-ordered (UUIDv7), which keep the
// processed-event table's inserts near the end of its index.
const (
	randomIDs  = false
	orderedIDs = true
)

// newDataset holds the log generate builds, in memory.
func newDataset(accounts, deposits int, ordered bool) (*dataset, error) {
	d := &dataset{accounts: accounts, events: make([]event, 0, accounts+deposits)}
	err := generate(accounts, deposits, ordered, func(ev event) error {
		d.events = append(d.events, ev)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return d, nil
}

// generate calls emit with accounts opens, then deposits deposits of 1
// round-robin over the accounts, in log order, with random request IDs or, if
// ordered, UUIDv7s (see randomIDs).
func generate(accounts, deposits int, ordered bool, emit func(event) error) error {
	for i := range accounts {
		ev, err := newEvent(accountName(i), &ledgerv1.AccountOpened{AccountId: accountName(i)}, 0, 0, ordered)
		if err != nil {
			return err
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
	balances := make([]int64, accounts)
	for i := range deposits {
		a := i % accounts
		balances[a]++
		ev, err := newEvent(accountName(a), &ledgerv1.FundsDeposited{AccountId: accountName(a), Amount: 1}, 1, balances[a], ordered)
		if err != nil {
			return err
		}
		if err := emit(ev); err != nil {
			return err
		}
	}
	return nil
}

// newEvent is msg for account as ingest would produce it.
func newEvent(account string, msg proto.Message, amount, balanceAfter int64, ordered bool) (event, error) {
	requestID := uuid.NewString()
	if ordered {
		requestID = uuid.Must(uuid.NewV7()).String()
	}
	env, err := ingest.NewEnvelope(account, requestID, msg)
	if err != nil {
		return event{}, err
	}
	rec, err := ingest.NewRecord(env)
	if err != nil {
		return event{}, err
	}
	return event{
		account:      account,
		requestID:    requestID,
		id:           envelope.EventID(requestID),
		fingerprint:  envelope.Fingerprint(env),
		amount:       amount,
		balanceAfter: balanceAfter,
		rec:          *rec,
	}, nil
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
		r := e.rec
		recs = append(recs, &r)
	}
	dups := 0
	for i := d.accounts; i < len(d.events); i += 100 {
		r := d.events[i].rec
		recs = append(recs, &r)
		dups++
	}
	return recs, dups
}
