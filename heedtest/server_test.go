package heedtest_test

import (
	"net/http"
	"testing"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/heedtest"
	"github.com/heed-dev/heed/ledger"
)

// Start serves the ledger's LedgerService: a command through it is applied,
// and a read with its consistency token sees it.
func TestStartServesTheDomain(t *testing.T) {
	s := heedtest.Start(t, ledger.Domain(), "--partitions", "2")
	if s.Schema != "heed" || s.Topic != "heed.ledger.events" {
		t.Errorf("schema %q, topic %q: want the ledger's defaults", s.Schema, s.Topic)
	}
	client := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, s.URL)
	ctx := t.Context()
	if _, err := client.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "o1", AccountId: "alice"})); err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	dep, err := client.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "d1", AccountId: "alice", Amount: 7}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	got, err := client.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "alice", ConsistencyToken: dep.Msg.GetConsistencyToken()}))
	if err != nil {
		t.Fatalf("GetAccount: %v", err)
	}
	if b := got.Msg.GetAccount().GetBalance(); b != 7 {
		t.Errorf("alice's balance %d after a deposit of 7", b)
	}

	// Publish skips the service: the applier decides alone.
	s.Publish(t, "alice", "d2", &ledgerv1.FundsDeposited{AccountId: "alice", Amount: 5})
	s.AwaitAll(t)
	var balance int64
	if err := s.Pool.QueryRow(ctx, `SELECT balance FROM accounts WHERE account_id = 'alice'`).Scan(&balance); err != nil {
		t.Fatal(err)
	}
	if balance != 12 {
		t.Errorf("alice's balance %d in the projection, want 12", balance)
	}
}

// A domain with no service of its own runs too: Publish and Await drive its
// applier, Pool reads its tables, in the schema and topic the flags name.
func TestStartPublishAwait(t *testing.T) {
	d := holdsDomain("holds", recordClock)
	s := heedtest.Start(t, d, "--schema", "holds_test", "--topic", "holds.test", "--partitions", "1")
	if s.Schema != "holds_test" || s.Topic != "holds.test" {
		t.Errorf("schema %q, topic %q: want the ones the flags name", s.Schema, s.Topic)
	}
	s.Publish(t, "seat1", "h1", wrapperspb.String("ann"))
	token := s.Publish(t, "seat1", "c1", wrapperspb.Bool(true))
	s.Await(t, token)
	var outcome string
	if err := s.Pool.QueryRow(t.Context(), `SELECT outcome FROM outcomes WHERE key = 'seat1'`).Scan(&outcome); err != nil {
		t.Fatalf("read seat1's outcome: %v", err)
	}
	if outcome != "booked" {
		t.Errorf("seat1: %s, want booked", outcome)
	}
	var processed int
	if err := s.Pool.QueryRow(t.Context(), `SELECT count(*) FROM processed_events`).Scan(&processed); err != nil || processed != 2 {
		t.Errorf("processed_events holds %d rows (%v), want 2", processed, err)
	}
}
