package dedup_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/dedup"
)

// windowClaim claims items within window in a committed transaction.
type windowClaim func(ctx context.Context, tx pgx.Tx, items []dedup.Item, window time.Duration) ([]dedup.Status, error)

// lookupRecordWithin looks items up, replaces the expired rows and records
// the New items' rows but the superseded ones, as the applier does.
func lookupRecordWithin(ctx context.Context, tx pgx.Tx, items []dedup.Item, window time.Duration) ([]dedup.Status, error) {
	b := &pgx.Batch{}
	l := dedup.QueueLookup(b, items, window)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, err
	}
	st, err := l.Statuses()
	if err != nil {
		return nil, err
	}
	if err := l.Replace(ctx, tx); err != nil {
		return nil, err
	}
	var rows []dedup.Row
	for i, it := range items {
		if st[i] == dedup.New && !l.Superseded(i) {
			rows = append(rows, dedup.Row{Item: it, Outcome: dedup.Applied})
		}
	}
	return st, dedup.Record(ctx, tx, rows)
}

// TestWindow: an event is a Duplicate (or a Conflict) of a row recorded up to
// the window before it, by its record time, and New past it, replacing the
// row; so the rule is the same whether the row was pruned or not. Claim
// (re-drives and drops) and a lookup with Record (the applier) agree.
func TestWindow(t *testing.T) {
	ways := map[string]windowClaim{
		"ClaimWithin": func(ctx context.Context, tx pgx.Tx, items []dedup.Item, w time.Duration) ([]dedup.Status, error) {
			return dedup.ClaimWithin(ctx, tx, items, w)
		},
		"QueueLookup": lookupRecordWithin,
	}
	for name, claim := range ways {
		t.Run(name, func(t *testing.T) { windowScenario(t, claim) })
	}
}

func windowScenario(t *testing.T, claim windowClaim) {
	pool := newPool(t)
	const W = time.Hour
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	a, b, c, legacy := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	at := func(id uuid.UUID, fp int64, d time.Duration) dedup.Item {
		return dedup.Item{ID: id, Key: "k", Fingerprint: fp, Time: t0.Add(d)}
	}
	S := func(s ...dedup.Status) []dedup.Status { return s }
	const New, Dup, Conflict = dedup.New, dedup.Duplicate, dedup.Conflict
	if _, err := pool.Exec(t.Context(), `INSERT INTO processed_events (event_id, key_hash, aggregate, fingerprint) VALUES ($1, $2, 'k', 7)`,
		legacy, dedup.KeyHash("k")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name   string
		window time.Duration
		items  []dedup.Item
		want   []dedup.Status
		// a's recorded time afterwards
		aTime time.Duration
	}{
		{"first", W, []dedup.Item{at(a, 1, 0)}, S(New), 0},
		{"a retry within the window", W, []dedup.Item{at(a, 1, 30*time.Minute)}, S(Dup), 0},
		{"at the window's edge", W, []dedup.Item{at(a, 1, W)}, S(Dup), 0},
		{"other content within the window", W, []dedup.Item{at(a, 2, 59*time.Minute)}, S(Conflict), 0},
		{"no window: a row stands forever", 0, []dedup.Item{at(a, 1, 10*W)}, S(Dup), 0},
		{"past the window: new, replacing the row", W, []dedup.Item{at(a, 1, W+time.Millisecond)}, S(New), W + time.Millisecond},
		{"within the window of the replacement", W, []dedup.Item{at(a, 2, 2*W)}, S(Conflict), W + time.Millisecond},
		{"twice in one claim, past the window of each other", W,
			[]dedup.Item{at(b, 1, 0), at(b, 1, 3*W), at(b, 1, 3*W+time.Minute), at(c, 1, 0)}, S(New, New, Dup, New), W + time.Millisecond},
		{"a row without a time is always within the window", W, []dedup.Item{at(legacy, 7, 100*W)}, S(Dup), W + time.Millisecond},
	}
	for _, s := range steps {
		var got []dedup.Status
		err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
			var err error
			got, err = claim(t.Context(), tx, s.items, s.window)
			return err
		})
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if !slices.Equal(got, s.want) {
			t.Errorf("%s: statuses %v, want %v", s.name, got, s.want)
		}
		if got := rowTime(t, pool, a); !got.Equal(t0.Add(s.aTime)) {
			t.Errorf("%s: a's row has time %v, want %v", s.name, got, t0.Add(s.aTime))
		}
	}
	if got, want := rowTime(t, pool, b), t0.Add(3*W); !got.Equal(want) {
		t.Errorf("b's row has time %v, want the later occurrence's %v", got, want)
	}
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM processed_events`).Scan(&n); err != nil || n != 4 {
		t.Errorf("processed_events has %d rows (%v), want 4 (a, b, c, legacy): one per event", n, err)
	}
}

func rowTime(t *testing.T, pool *pgxpool.Pool, id uuid.UUID) time.Time {
	t.Helper()
	var at time.Time
	if err := pool.QueryRow(t.Context(), `SELECT event_time FROM processed_events WHERE event_id = $1`, id).Scan(&at); err != nil {
		t.Fatalf("read the time of %s: %v", id, err)
	}
	return at
}

// A lookup that skips the database (SkipLookup) reports an expired event New
// (it knows no row); recording it then fails on the key, as for any event
// recorded before, and the retry with a lookup replaces the row.
func TestSkipLookupExpired(t *testing.T) {
	pool := newPool(t)
	ctx := t.Context()
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	first := dedup.Item{ID: uuid.New(), Key: "k", Fingerprint: 1, Time: t0}
	late := first
	late.Time = t0.Add(2 * time.Hour)
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		return dedup.Record(ctx, tx, []dedup.Row{{Item: first, Outcome: dedup.Applied}})
	}); err != nil {
		t.Fatal(err)
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		l := dedup.SkipLookup([]dedup.Item{late}, time.Hour)
		if st, err := l.Statuses(); err != nil || st[0] != dedup.New {
			t.Fatalf("SkipLookup: %v, %v; want new", st, err)
		}
		return dedup.Record(ctx, tx, []dedup.Row{{Item: late, Outcome: dedup.Applied}})
	})
	if err == nil {
		t.Fatal("recording an expired event without the lookup's replacement succeeded: it must fail on the key")
	}
	st, err := func() ([]dedup.Status, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer tx.Rollback(ctx) //nolint:errcheck // committed below
		st, err := lookupRecordWithin(ctx, tx, []dedup.Item{late}, time.Hour)
		if err != nil {
			return nil, err
		}
		return st, tx.Commit(ctx)
	}()
	if err != nil || st[0] != dedup.New {
		t.Fatalf("the retry with a lookup: %v, %v; want new", st, err)
	}
	if got := rowTime(t, pool, first.ID); !got.Equal(late.Time) {
		t.Errorf("row time %v, want the late record's %v", got, late.Time)
	}
}
