package dedup_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/dedup"
)

// BenchmarkClaim claims batches of 1,000 new event IDs, one committed
// transaction per batch: with Claim (INSERT ... ON CONFLICT DO NOTHING) and
// with QueueLookup and Record (a lookup, then COPY), each with
// time-ordered (UUIDv7) and random (UUIDv4) IDs: the processed-event table's
// index is where the difference shows.
//
//	go test -run '^$' -bench Claim -benchtime 200x ./dedup/
func BenchmarkClaim(b *testing.B) {
	ways := []struct {
		name  string
		claim func(ctx context.Context, tx pgx.Tx, items []dedup.Item) ([]dedup.Status, error)
	}{
		{"claim", func(ctx context.Context, tx pgx.Tx, items []dedup.Item) ([]dedup.Status, error) {
			return dedup.Claim(ctx, tx, items)
		}},
		{"lookup", lookupAndRecord},
	}
	ids := []struct {
		name string
		id   func() uuid.UUID
	}{
		{"uuidv7", func() uuid.UUID { return uuid.Must(uuid.NewV7()) }},
		{"uuidv4", uuid.New},
	}
	for _, w := range ways {
		for _, bc := range ids {
			b.Run(w.name+"/"+bc.name, func(b *testing.B) {
				const batch = 1000
				pool := newPool(b)
				ctx := context.Background()
				items := make([]dedup.Item, batch)
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					for i := range items {
						items[i] = dedup.Item{ID: bc.id(), Key: "acct-" + strconv.Itoa(i%100), Fingerprint: int64(i)}
					}
					b.StartTimer()
					tx, err := pool.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					st, err := w.claim(ctx, tx, items)
					if err != nil {
						b.Fatal(err)
					}
					if st[batch-1] != dedup.New {
						b.Fatalf("status %v, want new", st[batch-1])
					}
					if err := tx.Commit(ctx); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N*batch)/b.Elapsed().Seconds(), "ids/s")
			})
		}
	}
}
