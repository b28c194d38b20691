package ledger_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/schema"
)

// BenchmarkDrain measures how fast the applier drains a topic holding
// b.N deposits over 1,000 accounts on 8 partitions, with 1% duplicates, into a
// fresh schema: batched with the defaults (UUIDv7 request IDs), then one setting
// changed at a time (2 or 8 transactions at once instead of 4; 250, 1,000 or
// 8,000 records per batch instead of 4,000; name-based request IDs), and one
// event per transaction (the naive consumer most hand-written pipelines are).
// It reports events/s.
//
//	go test -run '^$' -bench Drain -benchtime 50000x ./ledger/
func BenchmarkDrain(b *testing.B) {
	v7 := func(int) string { return uuid.Must(uuid.NewV7()).String() }
	named := func(i int) string { return fmt.Sprintf("deposit-%d", i) } // name-based UUIDv5: random order
	for _, bc := range []struct {
		name        string
		batch       int
		concurrency int
		requestID   func(int) string
	}{
		{"batched", 0, 0, v7}, // the defaults: 4,000 records, 4 transactions at once
		{"batched-concurrency-2", 0, 2, v7},
		{"batched-concurrency-8", 0, 8, v7},
		{"batched-batch-250", 250, 0, v7},
		{"batched-batch-1000", 1000, 0, v7},
		{"batched-batch-8000", 8000, 0, v7},
		{"batched-named-ids", 0, 0, named},
		{"one-per-tx", 1, 8, v7},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.batch == 1 && b.N > 20000 {
				b.Skip("one-per-tx at this size takes minutes; run with -benchtime 5000x")
			}
			benchDrain(b, applier.Config{MaxBatchRecords: bc.batch, Concurrency: bc.concurrency}, bc.requestID)
		})
	}
}

func benchDrain(b *testing.B, cfg applier.Config, requestID func(int) string) {
	const accounts, partitions = 1000, 8
	ctx := context.Background()
	pool := benchPool(b, partitions+4)
	broker := testenv.Broker(b, partitions)
	topic := "bench.drain"
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker.Addrs()...), kgo.DefaultProduceTopic(topic), kgo.AllowAutoTopicCreation())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(cl.Close)

	// Opens first, then deposits, then 1% of the deposits again (duplicates).
	var recs []*kgo.Record
	for i := range accounts {
		recs = append(recs, benchRecord(b, fmt.Sprintf("acct-%d", i), fmt.Sprintf("open-%d", i), &ledgerv1.AccountOpened{AccountId: fmt.Sprintf("acct-%d", i)}))
	}
	deposits := make([]*kgo.Record, b.N)
	for i := range b.N {
		id := fmt.Sprintf("acct-%d", i%accounts)
		deposits[i] = benchRecord(b, id, requestID(i), &ledgerv1.FundsDeposited{AccountId: id, Amount: 1})
	}
	recs = append(recs, deposits...)
	for i := 0; i < b.N; i += 100 {
		d := *deposits[i]
		recs = append(recs, &d)
	}
	for i := 0; i < len(recs); i += 10000 {
		if err := cl.ProduceSync(ctx, recs[i:min(i+10000, len(recs))]...).FirstErr(); err != nil {
			b.Fatal(err)
		}
	}

	cfg.Brokers, cfg.Topic, cfg.Group = broker.Addrs(), topic, "bench"
	a, err := applier.New(cfg, pool, ledger.Applier{})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	b.ResetTimer()
	start := time.Now()
	go func() { done <- a.Run(runCtx) }()
	want := int64(accounts + b.N)
	for a.Stats().Applied < want {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	// Duplicates sit at the end of the log: let the applier reach them.
	deadline := time.Now().Add(time.Minute)
	for a.Stats().Duplicates < int64((b.N+99)/100) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	var total, rows int64
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(balance), 0), count(*) FROM accounts`).Scan(&total, &rows); err != nil {
		b.Fatal(err)
	}
	if total != int64(b.N) || rows != accounts || a.Stats().Duplicates != int64((b.N+99)/100) {
		b.Fatalf("after drain: balance sum %d (want %d), accounts %d (want %d), stats %+v", total, b.N, rows, accounts, a.Stats())
	}
	b.ReportMetric(float64(b.N+accounts)/elapsed.Seconds(), "events/s")
}

// benchPool returns a pool on a fresh, migrated database.
func benchPool(b *testing.B, conns int32) *pgxpool.Pool {
	b.Helper()
	pool, err := schema.Connect(context.Background(), testenv.PostgresURL(b), schema.Default, conns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	sets := ledger.Schema // the topic identity too: without it the applier waits to bind the topic forever
	if err := schema.Migrate(context.Background(), pool, schema.Default, sets, nil); err != nil {
		b.Fatal(err)
	}
	return pool
}

func benchRecord(tb testing.TB, account, requestID string, ev proto.Message) *kgo.Record {
	env, err := ingest.NewEnvelope(account, requestID, ev)
	if err != nil {
		tb.Fatal(err)
	}
	rec, err := ingest.NewRecord(env)
	if err != nil {
		tb.Fatal(err)
	}
	return rec
}
