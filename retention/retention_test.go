package retention_test

import (
	"errors"
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
