package retention_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/retention"
	"github.com/heed-dev/heed/schema"
)

const topicName = "ledger"

// newPool returns a pool on a fresh database with the applier's and dedup's
// migrations, and a dedup window of an hour recorded.
func newPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := schema.Connect(t.Context(), testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}}
	if err := schema.Migrate(t.Context(), pool, schema.Default, sets, testenv.Logger(t)); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if err := applier.BindWindow(t.Context(), pool, time.Hour); err != nil {
		t.Fatal(err)
	}
	return pool
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// TestCutoff: the cutoff is the window before the earliest bound over every
// partition that applied something (its record time, or its earliest open
// quarantined or parked record's), whichever partition holds it: several
// partitions lag by different amounts, and the earliest bound is neither the
// first partition's nor the latest.
func TestCutoff(t *testing.T) {
	pool := newPool(t)
	cfg := retention.Config{Topic: topicName}
	cutoff := func() (time.Time, bool, error) { return retention.Cutoff(t.Context(), pool, cfg) }
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	pos := func(p int32, next int64, at *time.Time) {
		exec(t, pool, `INSERT INTO applied_positions (topic, partition, next_offset, record_time) VALUES ($1, $2, $3, $4)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset, record_time = excluded.record_time`, topicName, p, next, at)
	}
	at := func(d time.Duration) *time.Time { x := t0.Add(d); return &x }
	want := func(name string, w time.Time) {
		t.Helper()
		got, ok, err := cutoff()
		if err != nil || !ok || !got.Equal(w) {
			t.Errorf("%s: cutoff %v, %v, %v; want %v", name, got, ok, err, w)
		}
	}

	if _, ok, err := cutoff(); ok || err != nil {
		t.Errorf("no partition applied anything: cutoff ok=%v, %v; want nothing to prune", ok, err)
	}
	// Partition 0 applied nothing (an assigned, empty partition): no bound.
	pos(0, 0, nil)
	pos(1, 10, at(5*time.Hour))
	pos(2, 10, at(2*time.Hour)) // lags the most
	pos(3, 10, at(9*time.Hour))
	want("three partitions, the middle one lags most", t0.Add(2*time.Hour-time.Hour))

	// A parked record on partition 3, older than partition 2's record time:
	// a re-drive will decide it with its own time.
	exec(t, pool, `INSERT INTO quarantine (topic, partition, "offset", kind, reason, key, state, record_time) VALUES
($1, 3, 4, 'poison', 'junk', 'k', 'open', $2), ($1, 3, 6, 'parked', 'parked', 'k', 'open', $3), ($1, 1, 2, 'poison', 'old, resolved', 'j', 'dropped', $4)`,
		topicName, at(3*time.Hour), at(90*time.Minute), at(-50*time.Hour))
	want("a parked record older than every record time", t0.Add(90*time.Minute-time.Hour))

	exec(t, pool, `UPDATE quarantine SET state = 'redriven' WHERE partition = 3`)
	want("once re-driven", t0.Add(2*time.Hour-time.Hour))

	// A partition applied before record times were kept blocks pruning.
	pos(4, 3, nil)
	if _, ok, err := cutoff(); ok || !errors.Is(err, retention.ErrBlocked) {
		t.Errorf("a partition without a record time: ok=%v, %v; want ErrBlocked", ok, err)
	}
	pos(4, 3, at(4*time.Hour))
	want("once it has one", t0.Add(2*time.Hour-time.Hour))
	exec(t, pool, `INSERT INTO quarantine (topic, partition, "offset", kind, reason, key, state) VALUES ($1, 1, 3, 'parked', 'parked', 'j', 'open')`, topicName)
	if _, ok, err := cutoff(); ok || !errors.Is(err, retention.ErrBlocked) {
		t.Errorf("an open parked record without a record time: ok=%v, %v; want ErrBlocked", ok, err)
	}
}

// Prune removes exactly the rows before the cutoff, and a projection
// without a window (0: kept forever) is never pruned.
func TestPruneNoWindow(t *testing.T) {
	pool, err := schema.Connect(t.Context(), testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}}
	if err := schema.Migrate(t.Context(), pool, schema.Default, sets, testenv.Logger(t)); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if err := applier.BindWindow(t.Context(), pool, 0); err != nil {
		t.Fatal(err)
	}
	exec(t, pool, `INSERT INTO applied_positions (topic, partition, next_offset, record_time) VALUES ($1, 0, 5, now())`, topicName)
	if c, ok, err := retention.Cutoff(t.Context(), pool, retention.Config{Topic: topicName, Retention: time.Hour}); ok || err != nil {
		t.Errorf("no window recorded as 0: cutoff %v, %v, %v; want nothing to prune", c, ok, err)
	}
}

// Prune removes the outbox rows before the cutoff that the relay produced,
// and keeps those it has not (however old: the relay still needs them),
// those the broker refused for good, and the recent ones.
func TestPruneOutbox(t *testing.T) {
	pool := newPool(t)
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	row := func(p int32, off int64, name string, at time.Time) {
		exec(t, pool, `INSERT INTO outbox (topic, origin_partition, origin_offset, name, event_id, key, key_hash, type, value, event_time)
VALUES ($1, $2, $3, $4, gen_random_uuid(), 'k', 1, 't', '\x00', $5)`, topicName, p, off, name, at)
	}
	old, recent := t0.Add(-3*time.Hour), t0.Add(time.Hour)
	row(0, 1, "credit", old)    // produced, old: pruned
	row(0, 2, "credit", old)    // produced, old: pruned
	row(0, 3, "credit", old)    // refused for good: kept
	row(0, 4, "credit", recent) // produced, recent: kept
	row(0, 9, "credit", old)    // not produced yet: kept
	row(1, 1, "refund", old)    // partition 1's relay has produced nothing: kept
	exec(t, pool, `INSERT INTO heed_outbox_relay (topic, origin_partition, next_offset) VALUES ($1, 0, 5), ($1, 1, 0)`, topicName)
	exec(t, pool, `INSERT INTO heed_outbox_failed (topic, origin_partition, origin_offset, name, reason) VALUES ($1, 0, 3, 'credit', 'too large')`, topicName)

	n, err := retention.Prune(t.Context(), pool, t0, 1) // a chunk of one row: the loop is tried too
	if err != nil {
		t.Fatalf("Prune: %v", err)
	}
	if n != 2 {
		t.Errorf("Prune removed %d rows; want the 2 produced old outbox rows", n)
	}
	rows, err := pool.Query(t.Context(), `SELECT origin_partition::text || '/' || origin_offset::text FROM outbox ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		left = append(left, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"0/3", "0/4", "0/9", "1/1"}; !slices.Equal(left, want) {
		t.Errorf("outbox rows left %v; want %v", left, want)
	}
}
