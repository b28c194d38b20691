package dedup_test

import (
	"bytes"
	"context"
	"slices"
	"strings"
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
// Record, each on a fresh schema: they must agree on every status.
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
		{"all new", true, []dedup.Item{{ID: a, Key: "k", Fingerprint: 1}, {ID: b, Key: "k", Fingerprint: 2}}, S(New, New)},
		{"replayed", true, []dedup.Item{{ID: a, Key: "k", Fingerprint: 1}, {ID: b, Key: "k", Fingerprint: 2}}, S(Dup, Dup)},
		{"mixed with a conflict", true, []dedup.Item{{ID: c, Key: "k", Fingerprint: 3}, {ID: a, Key: "k", Fingerprint: 1}, {ID: b, Key: "k", Fingerprint: 99}}, S(New, Dup, Conflict)},
		{"the same ID for another key is another event", true, []dedup.Item{{ID: a, Key: "other", Fingerprint: 9}, {ID: a, Key: "k", Fingerprint: 1}}, S(New, Dup)},
		{"duplicate inside one batch", true, []dedup.Item{{ID: d, Key: "k", Fingerprint: 4}, {ID: d, Key: "k", Fingerprint: 4}, {ID: d, Key: "k", Fingerprint: 5}}, S(New, Dup, Conflict)},
		{"rolled back claim", false, []dedup.Item{{ID: uuid.Nil, Key: "k", Fingerprint: 0}}, S(New)},
		{"after the rollback the ID is new again", true, []dedup.Item{{ID: uuid.Nil, Key: "k", Fingerprint: 0}}, S(New)},
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
	if n != 6 {
		t.Errorf("processed_events has %d rows, want 6 (a twice, b, c, d, nil)", n)
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

// KeyHash is what the migrations compute in Postgres for keys recorded before
// rows carried them: the two must agree, or a redelivered old event would look
// new.
func TestKeyHashMatchesPostgres(t *testing.T) {
	pool := newPool(t)
	for _, key := range []string{"", "acct-1", "a", "Ünïcode", strings.Repeat("x", 300)} {
		var pg int64
		err := pool.QueryRow(t.Context(), `SELECT CASE h WHEN 0 THEN 1 ELSE h END FROM (SELECT ('x' || left(md5($1), 16))::bit(64)::bigint AS h) s`, key).Scan(&pg)
		if err != nil {
			t.Fatal(err)
		}
		if got := dedup.KeyHash(key); got != pg || got == 0 {
			t.Errorf("KeyHash(%q) = %d, Postgres says %d", key, got, pg)
		}
	}
}

// A row recorded before rows carried keys (key_hash 0) stands for its ID under
// any key: a redelivery of that event is a duplicate, not a new event.
func TestRowWithoutKeyMatchesAnyKey(t *testing.T) {
	pool := newPool(t)
	id := uuid.New()
	if _, err := pool.Exec(t.Context(), `INSERT INTO processed_events (event_id, fingerprint) VALUES ($1, 7)`, id); err != nil {
		t.Fatal(err)
	}
	for name, claimer := range map[string]claimFunc{"Claim": claim, "QueueLookup": lookupClaim} {
		got := claimer(t, pool, false, dedup.Item{ID: id, Key: "acct-1", Fingerprint: 7}, dedup.Item{ID: id, Key: "acct-2", Fingerprint: 8})
		if want := []dedup.Status{dedup.Duplicate, dedup.Conflict}; !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", name, got, want)
		}
	}
}

// Record writes each row's outcome, SetOutcome changes one, and Results reads
// them back by event ID, one row per key.
func TestOutcomes(t *testing.T) {
	pool := newPool(t)
	ctx := t.Context()
	id := uuid.New()
	rows := []dedup.Row{
		{Item: dedup.Item{ID: id, Key: "b", Fingerprint: 1}, Outcome: dedup.Rejected, Reason: "no funds"},
		{Item: dedup.Item{ID: id, Key: "a", Fingerprint: 2}, Outcome: dedup.Applied, Result: []byte{8, 5}},
	}
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := dedup.Record(ctx, tx, rows); err != nil {
			return err
		}
		if _, err := dedup.Claim(ctx, tx, []dedup.Item{{ID: id, Key: "c", Fingerprint: 3}}); err != nil {
			return err
		}
		return dedup.SetOutcome(ctx, tx, dedup.Row{Item: dedup.Item{ID: id, Key: "c"}, Outcome: dedup.Dropped, Reason: "by hand"})
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := dedup.Results(ctx, pool, id)
	if err != nil {
		t.Fatal(err)
	}
	want := []dedup.Row{rows[1], rows[0], {Item: dedup.Item{ID: id, Key: "c", Fingerprint: 3}, Outcome: dedup.Dropped, Reason: "by hand"}}
	if len(got) != len(want) {
		t.Fatalf("Results = %+v, want %+v", got, want)
	}
	for i := range want {
		if g, w := got[i], want[i]; g.Item != w.Item || g.Outcome != w.Outcome || g.Reason != w.Reason || !bytes.Equal(g.Result, w.Result) {
			t.Errorf("row %d = %+v, want %+v", i, g, w)
		}
	}
	if err := dedup.SetOutcome(ctx, pool, dedup.Row{Item: dedup.Item{ID: uuid.New(), Key: "a"}, Outcome: dedup.Dropped}); err == nil {
		t.Error("SetOutcome of an event never recorded succeeded")
	}
	if none, err := dedup.Results(ctx, pool, uuid.New()); err != nil || len(none) != 0 {
		t.Errorf("Results of an unknown event = %v, %v; want none", none, err)
	}
}
