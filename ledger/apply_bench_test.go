package ledger_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// BenchmarkApply measures the domain's bulk apply alone: each op applies 1,000
// deposits over 125 accounts (one partition's share of 1,000 accounts on 8
// partitions) in one committed transaction, on one connection.
//
//	go test -run '^$' -bench Apply -benchtime 200x ./ledger/
func BenchmarkApply(b *testing.B) {
	const batch, accounts = 1000, 125
	ctx := context.Background()
	pool := benchPool(b, 2)
	opens := make([]applier.Event, accounts)
	for i := range opens {
		id := fmt.Sprintf("acct-%d", i)
		opens[i] = applier.Event{ID: uuid.Must(uuid.NewV7()), AggregateID: id, Payload: &ledgerv1.AccountOpened{AccountId: id}}
	}
	applyTx := func(events []applier.Event) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := (ledger.Applier{}).Apply(ctx, tx, events); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	applyTx(opens)
	events := make([]applier.Event, batch)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		for i := range events {
			id := fmt.Sprintf("acct-%d", i%accounts)
			events[i] = applier.Event{ID: uuid.Must(uuid.NewV7()), AggregateID: id, Payload: &ledgerv1.FundsDeposited{AccountId: id, Amount: 1}}
		}
		b.StartTimer()
		applyTx(events)
	}
	b.StopTimer()
	var total int64
	if err := pool.QueryRow(ctx, `SELECT sum(balance) FROM accounts`).Scan(&total); err != nil {
		b.Fatal(err)
	}
	if total != int64(b.N*batch) {
		b.Fatalf("balance sum %d, want %d", total, b.N*batch)
	}
	b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "events/s")
}
