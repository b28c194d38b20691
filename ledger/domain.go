package ledger

import (
	"fmt"
	"sync"

	"github.com/heed-dev/heed"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// Domain is the ledger as a heed domain: its events (accepted with their
// rules, applied in the batched form by Applier), its tables, its
// LedgerService and its results (CommandResult). cmd/heed runs it. Its
// defaults are the ones heed had before it ran other domains: topic
// heed.ledger.events, group heed-applier, schema heed, and event IDs derived
// as they were (heed.LegacyEventIDs).
func Domain() *heed.Domain {
	d := heed.NewDomain("ledger",
		heed.Topic("heed.ledger.events"), heed.Group("heed-applier"), heed.Schema("heed"),
		heed.LegacyEventIDs(),
		heed.NoValidation(), // the rules below, by hand: the applier checks every record it reads
		heed.Migrations(Migrations),
		heed.Results(&ledgerv1.CommandResult{}),
		heed.Banner(banner))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.AccountOpened) error {
		return checkAccount(key, m.GetAccountId())
	}))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.FundsDeposited) error {
		return checkAmount(key, m.GetAccountId(), m.GetAmount())
	}))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.FundsWithdrawn) error {
		return checkAmount(key, m.GetAccountId(), m.GetAmount())
	}))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.TransferDebited) error {
		return checkTransfer(key, m.GetFromAccountId(), m.GetToAccountId(), m.GetAmount())
	}))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.TransferCredited) error {
		return checkTransfer(key, m.GetToAccountId(), m.GetFromAccountId(), m.GetAmount())
	}))
	heed.Accept(d, heed.Check(func(key string, m *ledgerv1.TransferRefunded) error {
		return checkTransfer(key, m.GetFromAccountId(), m.GetToAccountId(), m.GetAmount())
	}))
	heed.Batch(d, Applier{})
	heed.Serve(d, func(env *heed.Env) ([]heed.Service, error) {
		svc := NewService(env.Publisher, env.Pool, env.Topic, env.ReadWaitMax, WithTopicEnds(env.Ends), WithRecordReader(env.ReadRecord))
		path, h := ledgerv1connect.NewLedgerServiceHandler(svc, env.Options...)
		return []heed.Service{{Name: ledgerv1connect.LedgerServiceName, Path: path, Handler: h}}, nil
	})
	return d
}

// banner is what heed dev prints for the ledger: two commands to paste.
func banner(addr string) string {
	return fmt.Sprintf(`Try (account banner-demo; the README's walkthrough uses other accounts and request IDs):
  grpcurl -plaintext -d '{"request_id":"banner-open-1","account_id":"banner-demo"}' %s heed.ledger.v1.LedgerService/OpenAccount
  grpcurl -plaintext -d '{"account_id":"banner-demo"}' %s heed.ledger.v1.LedgerService/GetAccount
`, addr, addr)
}

// checkAccount is the rule of every ledger event: a valid account_id that is
// the record key.
func checkAccount(key, id string) error {
	if !validAccountID(id) {
		return fmt.Errorf("account_id %q does not match %s", id, accountIDPattern)
	}
	if id != key {
		return fmt.Errorf("account_id %q is not the aggregate_id %q", id, key)
	}
	return nil
}

// checkAmount is checkAccount and a positive amount.
func checkAmount(key, id string, amount int64) error {
	if err := checkAccount(key, id); err != nil {
		return err
	}
	if amount <= 0 {
		return fmt.Errorf("amount %d must be greater than 0", amount)
	}
	return nil
}

// checkTransfer is the rule of a transfer's steps: checkAmount for the
// account the step is for (keyed by it), and a valid other account.
func checkTransfer(key, id, other string, amount int64) error {
	if err := checkAmount(key, id, amount); err != nil {
		return err
	}
	if !validAccountID(other) {
		return fmt.Errorf("the other account_id %q does not match %s", other, accountIDPattern)
	}
	if other == id {
		return fmt.Errorf("a transfer from account %q to itself", id)
	}
	return nil
}

// domain returns the ledger's Domain, built once: what its handler decodes
// with and its services derive follow-up IDs with. (A function, not a
// sync.OnceValue, since Domain's service refers back to it.)
func domain() *heed.Domain {
	domainOnce.Do(func() { domainValue = Domain() })
	return domainValue
}

var (
	domainOnce  sync.Once
	domainValue *heed.Domain
)

// decoder is the domain's handler, whose Decode Applier.Decode is.
var decoder = sync.OnceValue(func() interface {
	Decode(*envelopev1.Envelope) (any, error)
} {
	return domain().Handler()
})
