package heed_test

import (
	"context"
	"errors"
	"fmt"
	"testing/fstest"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// A domain in the simple form: each event applies with SQL inside heed's
// transaction. The handler never commits; heed records the event as
// processed, with its result, in the same transaction.
func ExampleOn() {
	d := heed.NewDomain("wallet", heed.Migrations(fstest.MapFS{
		"00001_wallets.sql": {Data: []byte(`-- +goose Up
CREATE TABLE wallets (id text PRIMARY KEY, balance bigint NOT NULL);
-- +goose Down
DROP TABLE wallets;
`)},
	}))
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*ledgerv1.AccountOpened]) (heed.Result, error) {
		tag, err := tx.Exec(ctx, `INSERT INTO wallets (id, balance) VALUES ($1, 0) ON CONFLICT DO NOTHING`, ev.Key)
		if err != nil {
			return heed.Result{}, err // rolls the batch back; heed retries or finds the culprit
		}
		if tag.RowsAffected() == 0 {
			return heed.Rejected("wallet " + ev.Key + " already exists"), nil
		}
		return heed.Applied(nil)
	})
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*ledgerv1.FundsDeposited]) (heed.Result, error) {
		var balance int64
		err := tx.QueryRow(ctx, `UPDATE wallets SET balance = balance + $2 WHERE id = $1 RETURNING balance`, ev.Key, ev.Msg.GetAmount()).Scan(&balance)
		if errors.Is(err, pgx.ErrNoRows) {
			return heed.Rejected("wallet " + ev.Key + " does not exist"), nil
		}
		if err != nil {
			return heed.Result{}, err
		}
		return heed.Applied(&ledgerv1.CommandResult{BalanceAfter: balance})
	}, heed.Check(func(key string, m *ledgerv1.FundsDeposited) error {
		if m.GetAmount() <= 0 {
			return fmt.Errorf("amount %d must be positive", m.GetAmount())
		}
		return nil
	}))
	fmt.Println(d.Name(), d.DefaultTopic(), d.DefaultGroup(), d.DefaultSchema())
	fmt.Println(d.EventTypes())
	fmt.Println(d.Check())
	// Output:
	// wallet wallet.events wallet-applier wallet
	// [heed.ledger.v1.AccountOpened heed.ledger.v1.FundsDeposited]
	// <nil>
}

// A record whose event breaks a Check rule never reaches a handler: heed
// quarantines it with the rule's words, and the key's later events wait.
func ExampleCheck() {
	d := heed.NewDomain("wallet")
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*ledgerv1.FundsDeposited]) (heed.Result, error) {
		return heed.Applied(nil)
	}, heed.Check(func(key string, m *ledgerv1.FundsDeposited) error {
		if m.GetAccountId() != key {
			return fmt.Errorf("account_id %q is not the key %q", m.GetAccountId(), key)
		}
		return nil
	}))
	payload, _ := anypb.New(&ledgerv1.FundsDeposited{AccountId: "bob", Amount: 5})
	_, err := d.Handler().Decode(&envelopev1.Envelope{AggregateId: "alice", Type: "heed.ledger.v1.FundsDeposited", Payload: payload})
	fmt.Println(err)
	// Output:
	// invalid heed.ledger.v1.FundsDeposited: account_id "bob" is not the key "alice"
}

// The batched form: Load queues the reads a batch needs, Queue decides every
// event in memory and queues the writes. A batch of any size costs two round
// trips to Postgres.
type counts struct{}

func (counts) Load(b *pgx.Batch, events []heed.Record) heed.Loaded {
	l := &loadedCounts{seen: map[string]int64{}}
	keys := make([]string, 0, len(events))
	for _, ev := range events {
		keys = append(keys, ev.AggregateID)
	}
	b.Queue(`SELECT key, n FROM counts WHERE key = ANY($1)`, keys).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var k string
			var n int64
			if err := rows.Scan(&k, &n); err != nil {
				return err
			}
			l.seen[k] = n
		}
		return rows.Err()
	})
	return l
}

type loadedCounts struct{ seen map[string]int64 }

func (l *loadedCounts) Queue(events []heed.Record, b *pgx.Batch) ([]heed.Result, error) {
	results := make([]heed.Result, len(events))
	for i, ev := range events {
		l.seen[ev.AggregateID] += ev.Payload.(*ledgerv1.FundsDeposited).GetAmount()
		data, _ := proto.Marshal(&ledgerv1.CommandResult{BalanceAfter: l.seen[ev.AggregateID]})
		results[i].Data = data
	}
	for k, n := range l.seen {
		b.Queue(`INSERT INTO counts (key, n) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET n = excluded.n`, k, n)
	}
	return results, nil
}

func ExampleBatch() {
	d := heed.NewDomain("counts", heed.Results(&ledgerv1.CommandResult{}))
	heed.Accept[*ledgerv1.FundsDeposited](d)
	heed.Batch(d, counts{})
	fmt.Println(d.Check())
	// Mixing the forms is refused before anything runs.
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*ledgerv1.AccountOpened]) (heed.Result, error) {
		return heed.Applied(nil)
	})
	fmt.Println(d.Check())
	// Output:
	// <nil>
	// domain counts: both forms used: apply every event with heed.On, or accept them all with heed.Accept and apply them with heed.Batch
}

// A domain's Connect service publishes a command's event in one call and
// reads its projection after waiting for the caller's consistency token.
type walletService struct {
	ledgerv1connect.UnimplementedLedgerServiceHandler
	env *heed.Env
}

// Deposit validates nothing itself (the request's protovalidate rules run in
// env.Options' interceptor) and publishes the event: the applier decides it.
func (s *walletService) Deposit(ctx context.Context, req *connect.Request[ledgerv1.DepositRequest]) (*connect.Response[ledgerv1.DepositResponse], error) {
	m := req.Msg
	id, token, err := s.env.Publisher.Publish(ctx, m.GetAccountId(), m.GetRequestId(), &ledgerv1.FundsDeposited{AccountId: m.GetAccountId(), Amount: m.GetAmount()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.DepositResponse{EventId: id, ConsistencyToken: token}), nil
}

// GetAccount reads the projection once the caller's own write is applied.
func (s *walletService) GetAccount(ctx context.Context, req *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	if err := s.env.Await(ctx, req.Msg.GetConsistencyToken()); err != nil {
		return nil, err
	}
	var balance int64
	if err := s.env.Pool.QueryRow(ctx, `SELECT balance FROM wallets WHERE id = $1`, req.Msg.GetAccountId()).Scan(&balance); err != nil {
		return nil, heed.ReadError(err)
	}
	return connect.NewResponse(&ledgerv1.GetAccountResponse{Account: &ledgerv1.Account{AccountId: req.Msg.GetAccountId(), Balance: balance}}), nil
}

func ExampleServe() {
	d := heed.NewDomain("wallet")
	heed.Serve(d, func(env *heed.Env) ([]heed.Service, error) {
		path, h := ledgerv1connect.NewLedgerServiceHandler(&walletService{env: env}, env.Options...)
		return []heed.Service{{Name: ledgerv1connect.LedgerServiceName, Path: path, Handler: h}}, nil
	})
	services, err := d.Services(&heed.Env{})
	fmt.Println(len(services), services[0].Name, services[0].Path, err)
	// Output:
	// 1 heed.ledger.v1.LedgerService /heed.ledger.v1.LedgerService/ <nil>
}
