package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/outbox"
	"github.com/heed-dev/heed/topic"
)

// transferPlan is the transfers phase's log: opens of the accounts, a
// deposit funding each with what it sends (so that no transfer is refused,
// whatever order the partitions apply in), then transfers of 1 between
// random pairs of distinct accounts; and each account's balance once every
// transfer settled.
type transferPlan struct {
	setup, transfers []*kgo.Record
	funds            int64   // the deposits' sum, which the transfers conserve
	balances         []int64 // by account index, once every transfer settled
	from, to         []int   // by transfer, account indexes
}

// newTransferPlan plans n transfers over accounts accounts (at least 2).
func newTransferPlan(accounts, n int) (*transferPlan, error) {
	p := &transferPlan{balances: make([]int64, accounts), from: make([]int, n), to: make([]int, n)}
	sent := make([]int64, accounts)
	for i := range n {
		f, t := rand.IntN(accounts), rand.IntN(accounts-1)
		if t >= f {
			t++
		}
		p.from[i], p.to[i] = f, t
		sent[f]++
		p.balances[t]++
	}
	for i := range accounts {
		rec, err := ledgerRecord(accountName(i), &ledgerv1.AccountOpened{AccountId: accountName(i)})
		if err != nil {
			return nil, err
		}
		p.setup = append(p.setup, rec)
	}
	for i := range accounts {
		fund := sent[i] + 1 // a deposit is positive
		rec, err := ledgerRecord(accountName(i), &ledgerv1.FundsDeposited{AccountId: accountName(i), Amount: fund})
		if err != nil {
			return nil, err
		}
		p.setup = append(p.setup, rec)
		p.funds += fund
		p.balances[i] += fund - sent[i]
	}
	for i := range n {
		rec, err := ledgerRecord(accountName(p.from[i]), &ledgerv1.TransferDebited{
			FromAccountId: accountName(p.from[i]), ToAccountId: accountName(p.to[i]), Amount: 1,
		})
		if err != nil {
			return nil, err
		}
		p.transfers = append(p.transfers, rec)
	}
	return p, nil
}

// ledgerRecord is msg for account with a random request ID, as the ledger's
// service writes it.
func ledgerRecord(account string, msg proto.Message) (*kgo.Record, error) {
	env, err := ingest.NewEnvelope(account, uuid.NewString(), msg)
	if err != nil {
		return nil, err
	}
	return ingest.NewRecord(env)
}

// transfers measures transfers end to end: Transfers transfers of 1 between
// random pairs of Accounts accounts (most on different partitions), written
// to a topic as the ledger's Transfer RPC writes them, whose accounts are
// opened and funded (applied beforehand). The applier then starts with its
// relay, as heed apply runs them, and the phase times them from the start
// until every transfer settled: its debit applied, its credit written to the
// outbox in the debit's transaction, produced by the relay, acknowledged and
// applied. It checks that every debit and credit applied once, that nothing
// was refused, refunded or quarantined, that every account holds what the
// plan says and that the balances still sum to the deposits.
func (e *env) transfers(ctx context.Context, r *Result) error {
	accounts, n := max(2, e.cfg.Accounts), e.cfg.Transfers
	e.progress("transfers: planning %d transfers between %d accounts", n, accounts)
	plan, err := newTransferPlan(accounts, n)
	if err != nil {
		return err
	}
	cfg := e.cfg.Applier
	pool, _, drop, err := e.freshSchema(ctx, "transfers", int32(cfg.Concurrency)+4) // the relay's and the guard's connections too
	if err != nil {
		return err
	}
	defer drop()
	name, cl, del, err := e.topic(ctx, "transfers")
	if err != nil {
		return err
	}
	defer del()

	e.progress("transfers: opening and funding %d accounts", accounts)
	if err := e.produce(ctx, cl, plan.setup); err != nil {
		return err
	}
	if _, err := e.runTransfers(ctx, pool, cl, name, "transfers_setup", len(plan.setup), 0); err != nil {
		return fmt.Errorf("open and fund the accounts: %w", err)
	}
	partition := make(map[string]int32, accounts) // the produce set each record's partition
	for _, rec := range plan.setup[:accounts] {
		partition[string(rec.Key)] = rec.Partition
	}
	cross := 0
	for i := range n {
		if partition[accountName(plan.from[i])] != partition[accountName(plan.to[i])] {
			cross++
		}
	}

	e.progress("transfers: producing %d transfers to %s", n, name)
	if err := e.produce(ctx, cl, plan.transfers); err != nil {
		return err
	}
	plan.setup, plan.transfers = nil, nil
	e.settle(ctx)
	res, err := e.runTransfers(ctx, pool, cl, name, "transfers", 2*n, n)
	if err != nil {
		return err
	}
	if err := checkTransfers(ctx, pool, plan); err != nil {
		return err
	}
	r.Transfers, r.TransferAccounts = n, accounts
	r.TransferCrossPartition = float64(cross) / float64(n)
	r.TransfersPerS = float64(n) / res.elapsed.Seconds()
	r.TransferEventsPerS = float64(2*n) / res.elapsed.Seconds()
	r.TransferRelayed, r.TransferDups = res.relayed, res.dups
	e.progress("transfers: %d transfers (%.0f%% across partitions) settled in %s: %.0f transfers/s, %.0f events/s (debit and credit); the relay produced %d credits, %d duplicates skipped",
		n, 100*r.TransferCrossPartition, res.elapsed.Round(time.Millisecond), r.TransfersPerS, r.TransferEventsPerS, res.relayed, res.dups)
	return nil
}

type transferRun struct {
	elapsed       time.Duration
	relayed, dups int64
}

// runTransfers runs an applier of group (a fresh one: the partitions resume
// from their positions in Postgres) and the relay of the partitions it owns,
// as heed apply runs them (a commit that emitted wakes the relay; the relay
// publishes through a producer gated by the topic guard), until the applier
// applied want records, then stops them. It fails on a record that did not
// apply (rejected records count as applied: checkTransfers finds them), and
// when the relay produced fewer than relayed rows.
func (e *env) runTransfers(ctx context.Context, pool *pgxpool.Pool, cl *kgo.Client, name, group string, want, relayed int) (transferRun, error) {
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	guard := topic.NewGuard(pool, cl, name, 0, e.cfg.Logger)
	if err := guard.Check(ctx); err != nil {
		return transferRun{}, fmt.Errorf("bind the projection to the topic: %w", err)
	}
	go guard.Run(runCtx)
	pub, err := ingest.NewPublisher(ingest.Config{Brokers: e.broker.Addrs(), Topic: name, Gate: guard, Logger: e.cfg.Logger.With("component", "relay")})
	if err != nil {
		return transferRun{}, err
	}
	defer pub.Close()
	var relay *outbox.Relay
	acfg := e.applierConfig(e.cfg.Applier, name, e.name(group))
	acfg.OnEmit = func(p int32) { relay.Wake(p) }
	a, err := applier.New(acfg, pool, ledger.Domain().Handler())
	if err != nil {
		return transferRun{}, err
	}
	relay = outbox.New(pool, pub, outbox.Config{Topic: name, Partitions: a.Partitions, Logger: e.cfg.Logger.With("component", "relay")})

	applied, relaying := make(chan error, 1), make(chan error, 1)
	start := time.Now()
	go func() { applied <- a.Run(runCtx) }()
	go func() { relaying <- relay.Run(runCtx) }()
	lastReport := start
	for {
		s := a.Stats()
		if s.Conflicts+s.Quarantined > 0 {
			return transferRun{}, fmt.Errorf("WRONG RESULT: %d conflicts and %d records quarantined (want 0)", s.Conflicts, s.Quarantined)
		}
		if s.Applied >= int64(want) {
			break
		}
		select {
		case err := <-applied:
			if err == nil {
				err = errors.New("it returned without an error")
			}
			return transferRun{}, fmt.Errorf("the applier stopped before every transfer settled: %w", err)
		case <-ctx.Done():
			return transferRun{}, ctx.Err()
		case <-time.After(time.Millisecond):
		}
		if time.Since(lastReport) >= 2*time.Second {
			lastReport = time.Now()
			e.progress("%s: %d/%d records applied, %d relayed", group, s.Applied, want, relay.Produced())
		}
	}
	res := transferRun{elapsed: time.Since(start), relayed: relay.Produced()}
	cancel()
	if err := <-applied; err != nil {
		return transferRun{}, fmt.Errorf("applier: %w", err)
	}
	if err := <-relaying; err != nil {
		return transferRun{}, fmt.Errorf("relay: %w", err)
	}
	s := a.Stats()
	res.dups = s.Duplicates
	if s.Applied != int64(want) || res.relayed < int64(relayed) {
		return transferRun{}, fmt.Errorf("WRONG RESULT: applied %d records (want %d), the relay produced %d follow-ups (want %d or more)", s.Applied, want, res.relayed, relayed)
	}
	return res, nil
}

// checkTransfers checks the projection (q: a pool or a transaction whose
// search_path is the phase's schema) after plan's transfers: every event
// applied once, none rejected; one credit in the outbox per transfer and no
// refund; every account's balance the plan's, and their sum the deposits.
func checkTransfers(ctx context.Context, q querier, plan *transferPlan) error {
	accounts, n := len(plan.balances), len(plan.from)
	var applied, other, credits, refunds, rows, wrong, sum int64
	ids := make([]string, accounts)
	for i := range ids {
		ids[i] = accountName(i)
	}
	err := q.QueryRow(ctx, `SELECT
  (SELECT count(*) FROM processed_events WHERE status = 2),
  (SELECT count(*) FROM processed_events WHERE status <> 2),
  (SELECT count(*) FROM outbox WHERE name = $3),
  (SELECT count(*) FROM outbox WHERE name <> $3),
  (SELECT count(*) FROM accounts),
  (SELECT count(*) FROM accounts a JOIN unnest($1::text[], $2::int8[]) AS want(id, balance)
     ON a.account_id = want.id WHERE a.balance <> want.balance),
  (SELECT coalesce(sum(balance), 0) FROM accounts)`, ids, plan.balances, ledger.StepCredit).
		Scan(&applied, &other, &credits, &refunds, &rows, &wrong, &sum)
	if err != nil {
		return fmt.Errorf("read the ledger back: %w", err)
	}
	if want := int64(2*accounts + 2*n); applied != want || other != 0 || credits != int64(n) || refunds != 0 ||
		rows != int64(accounts) || wrong != 0 || sum != plan.funds {
		return fmt.Errorf("WRONG RESULT: %d events applied (want %d), %d rejected or dropped (want 0), %d credits and %d other follow-ups in the outbox (want %d and 0), %d accounts (want %d), %d of them with another balance than planned, balances summing to %d (want the deposits' %d)",
			applied, want, other, credits, refunds, n, rows, accounts, wrong, sum, plan.funds)
	}
	return nil
}
