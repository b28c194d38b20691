package dedup_test

import (
	"context"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// newPool returns a pool on a fresh database with the dedup migrations applied.
func newPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, err := schema.Connect(t.Context(), testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(t.Context(), pool, schema.Default, []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}}, testenv.Logger(t)); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return pool
}

// claim runs Claim in its own transaction, committed when commit is set.
func claim(t *testing.T, pool *pgxpool.Pool, commit bool, items ...dedup.Item) []dedup.Status {
	t.Helper()
	var got []dedup.Status
	err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		var err error
		got, err = dedup.Claim(t.Context(), tx, items)
		if err == nil && !commit {
			err = errRollback
		}
		return err
	})
	if err != nil && err != errRollback {
		t.Fatalf("claim: %v", err)
	}
	return got
}

var errRollback = context.Canceled // any sentinel: makes BeginFunc roll back

// claimFunc claims items in a transaction it commits or rolls back, and
// returns their statuses.
type claimFunc func(t *testing.T, pool *pgxpool.Pool, commit bool, items ...dedup.Item) []dedup.Status

// TestClaim runs one scenario through Claim and through QueueLookup with
// QueueRecord, each on a fresh schema: they must agree on every status.
func TestClaim(t *testing.T) {
	for name, claimer := range map[string]claimFunc{"Claim": claim, "QueueLookup": lookupClaim} {
		t.Run(name, func(t *testing.T) { claimScenario(t, claimer) })
	}
}

func claimScenario(t *testing.T, claimer claimFunc) {
	pool := newPool(t)
	a, b, c, d := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	S := func(s ...dedup.Status) []dedup.Status { return s }
	const (
		New, Dup, Conflict = dedup.New, dedup.Duplicate, dedup.Conflict
	)

	steps := []struct {
		name   string
		commit bool
		items  []dedup.Item
		want   []dedup.Status
	}{
		{"all new", true, []dedup.Item{{a, 1}, {b, 2}}, S(New, New)},
		{"replayed", true, []dedup.Item{{a, 1}, {b, 2}}, S(Dup, Dup)},
		{"mixed with a conflict", true, []dedup.Item{{c, 3}, {a, 1}, {b, 99}}, S(New, Dup, Conflict)},
		{"duplicate inside one batch", true, []dedup.Item{{d, 4}, {d, 4}, {d, 5}}, S(New, Dup, Conflict)},
		{"rolled back claim", false, []dedup.Item{{uuid.Nil, 0}}, S(New)},
		{"after the rollback the ID is new again", true, []dedup.Item{{uuid.Nil, 0}}, S(New)},
		{"empty", true, nil, nil},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if got := claimer(t, pool, s.commit, s.items...); !slices.Equal(got, s.want) {
				t.Errorf("statuses = %v, want %v", got, s.want)
			}
		})
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM processed_events`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("processed_events has %d rows, want 5 (a, b, c, d, nil)", n)
	}
	var fp int64
	if err := pool.QueryRow(t.Context(), `SELECT fingerprint FROM processed_events WHERE event_id = $1`, b).Scan(&fp); err != nil || fp != 2 {
		t.Errorf("b's fingerprint = %d, %v; want the first claim's 2", fp, err)
	}
}

func TestStatusString(t *testing.T) {
	for s, want := range map[dedup.Status]string{dedup.New: "new", dedup.Duplicate: "duplicate", dedup.Conflict: "conflict", 0: "Status(0)"} {
		if s.String() != want {
			t.Errorf("%d.String() = %q, want %q", s, s.String(), want)
		}
	}
}
