// Package retention prunes the processed-event table and the outbox's
// produced rows, which otherwise grow with every event forever, without ever
// changing a decision.
//
// Whether an event is a duplicate is decided by the topic alone (see package
// dedup's window): an event with record time T is a duplicate of a processed
// row with time t only when T - t <= W, the dedup window (the retention,
// --retention, recorded in the projection at first use). Record time is a
// partition's effective time: the latest record timestamp up to the record,
// in log order (see package applier), so it never goes backwards. A row may
// go once no decision still to be made can find it within the window:
//   - the records a partition has not applied yet have record times at or
//     after its high-water (the effective time of its last applied record,
//     applied_positions.record_time), and
//   - its open quarantined and parked records, which a re-drive or a drop
//     decides later, each with its own stored record time,
//
// so with bound(p) the earlier of the two for partition p, a row with time
// t is not needed once t < bound(p) - W for every partition p. Processed
// rows do not carry their partition, so the cutoff is the earliest bound over
// the partitions that applied anything, minus W: nothing is read from Kafka.
//
// Consequences an operator sees:
//   - an idle partition (no new records) holds the cutoff at its last
//     record's time; so does a partition with an open quarantined record,
//     until it is re-driven or dropped;
//   - a partition whose position was applied before record times were kept
//     (a projection migrated from an older heed), or an open quarantined
//     record from then, blocks pruning (ErrBlocked) until the partition
//     applies a batch or the record is resolved;
//   - a command retried more than W after its first record is a new command,
//     applied again, whether or not its row was pruned: live, resumed and
//     rebuilt projections decide it alike; GetCommandResult for a pruned
//     command says so (expired) when given its consistency token.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/lograte"
)

// DefaultRetention is how long processed events are kept by default, and the
// default dedup window.
const DefaultRetention = 7 * 24 * time.Hour

// lockSQL takes the advisory lock that lets one pruner run per projection
// (database and schema) at a time; unlockSQL releases it.
const (
	lockSQL   = `SELECT pg_try_advisory_lock(hashtext(current_schema() || '/heed-retention'))`
	unlockSQL = `SELECT pg_advisory_unlock(hashtext(current_schema() || '/heed-retention'))`
)

// Config configures Cutoff, Prune and Run.
type Config struct {
	// Topic is the topic whose partitions' record times bound the cutoff.
	Topic string
	// Retention is the dedup window when the projection has none recorded
	// yet (default DefaultRetention); the projection's recorded one (see
	// applier.BindWindow) wins.
	Retention time.Duration
	// Chunk is how many rows one DELETE removes (default 10000), so that
	// no transaction holds many rows' locks for long.
	Chunk  int
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.Chunk <= 0 {
		c.Chunk = 10000
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ErrBlocked is in Cutoff's error when a partition's record time is not
// known (see the package doc): nothing may be pruned until it is.
var ErrBlocked = errors.New("pruning is blocked")

// boundsSQL reads, for each partition of the topic that applied anything,
// its record time and the earliest record time of its open quarantined and
// parked records, and whether one of those has none.
const boundsSQL = `SELECT p.partition, p.record_time,
  (SELECT min(q.record_time) FROM quarantine q WHERE q.topic = p.topic AND q.partition = p.partition AND q.state = 'open' AND q.kind IN ('poison', 'parked')),
  EXISTS (SELECT 1 FROM quarantine q WHERE q.topic = p.topic AND q.partition = p.partition AND q.state = 'open' AND q.kind IN ('poison', 'parked') AND q.record_time IS NULL)
FROM applied_positions p WHERE p.topic = $1 AND p.next_offset > 0 AND p.retired_at IS NULL ORDER BY p.partition`

// Cutoff is the safe cutoff: the dedup window before the earliest bound over
// the partitions (see the package doc). ok is false when nothing may be
// pruned: no partition applied anything, or the projection has no window
// (processed events kept forever). An error wrapping ErrBlocked says which
// partition blocks pruning and why; others are the database's, wrapped.
func Cutoff(ctx context.Context, pool *pgxpool.Pool, cfg Config) (cutoff time.Time, ok bool, err error) {
	cfg.setDefaults()
	window, recorded, err := applier.RecordedWindow(ctx, pool)
	if err != nil {
		return time.Time{}, false, err
	}
	if !recorded {
		window = cfg.Retention
	}
	if window <= 0 {
		return time.Time{}, false, nil
	}
	rows, err := pool.Query(ctx, boundsSQL, cfg.Topic)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read the partitions' record times: %w", err)
	}
	defer rows.Close()
	var earliest time.Time
	for rows.Next() {
		var (
			p           int32
			high, open  *time.Time
			openUntimed bool
		)
		if err := rows.Scan(&p, &high, &open, &openUntimed); err != nil {
			return time.Time{}, false, fmt.Errorf("read the partitions' record times: %w", err)
		}
		switch {
		case high == nil:
			return time.Time{}, false, fmt.Errorf("%w: partition %d was applied before record times were kept; it is known once the partition applies a batch", ErrBlocked, p)
		case openUntimed:
			return time.Time{}, false, fmt.Errorf("%w: partition %d has an open quarantined record from before record times were kept; re-drive or drop it (heed quarantine)", ErrBlocked, p)
		}
		bound := *high
		if open != nil && open.Before(bound) {
			bound = *open
		}
		if earliest.IsZero() || bound.Before(earliest) {
			earliest = bound
		}
	}
	if err := rows.Err(); err != nil {
		return time.Time{}, false, fmt.Errorf("read the partitions' record times: %w", err)
	}
	if earliest.IsZero() {
		return time.Time{}, false, nil
	}
	return earliest.Add(-window), true, nil
}

// pruneProcessedSQL deletes a chunk of the processed events whose event_time
// is before the cutoff.
const pruneProcessedSQL = `DELETE FROM processed_events WHERE ctid = ANY (ARRAY(
SELECT ctid FROM processed_events WHERE event_time < $1 LIMIT $2))`

// pruneOutboxSQL deletes a chunk of the outbox rows the relay is done with
// (below its position: produced) whose event_time is before the cutoff. A
// row not produced yet stays whatever its age, and so does one the broker
// refused for good (heed_outbox_failed names it; the row holds its value).
// Nothing reads a produced row again: the relay starts at its position, a
// rebuild writes its own rows and a swap carries the position over, and
// rebuild --verify leaves out rows before the cutoff (package rebuild).
const pruneOutboxSQL = `DELETE FROM outbox WHERE ctid = ANY (ARRAY(
SELECT o.ctid FROM outbox o JOIN heed_outbox_relay r ON r.topic = o.topic AND r.origin_partition = o.origin_partition
WHERE o.event_time < $1 AND o.origin_offset < r.next_offset
AND NOT EXISTS (SELECT FROM heed_outbox_failed f WHERE f.topic = o.topic AND f.origin_partition = o.origin_partition
AND f.origin_offset = o.origin_offset AND f.name = o.name)
LIMIT $2))`

// Prune deletes the processed events whose event_time is before cutoff, and
// the outbox rows as old that were produced (pruneOutboxSQL), a chunk per
// statement, records the cutoff and returns how many rows went.
func Prune(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time, chunk int) (int64, error) {
	if chunk <= 0 {
		chunk = 10000
	}
	var total int64
	for _, step := range []struct{ what, sql string }{
		{"processed events", pruneProcessedSQL},
		{"the outbox", pruneOutboxSQL},
	} {
		for {
			tag, err := pool.Exec(ctx, step.sql, cutoff, chunk)
			if err != nil {
				return total, fmt.Errorf("prune %s: %w", step.what, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() < int64(chunk) {
				break
			}
		}
	}
	_, err := pool.Exec(ctx, `INSERT INTO heed_retention (cutoff, pruned, ran_at) VALUES ($1, $2, now())
ON CONFLICT (singleton) DO UPDATE SET cutoff = greatest(heed_retention.cutoff, excluded.cutoff), pruned = heed_retention.pruned + excluded.pruned, ran_at = now()`, cutoff, total)
	if err != nil {
		return total, fmt.Errorf("record the retention cutoff: %w", err)
	}
	return total, nil
}

// ErrBusy is Once's error when another process holds the pruning lock.
var ErrBusy = errors.New("another heed process is pruning this projection")

// Once prunes what is safe to prune now, unless another process is pruning
// the same projection (ErrBusy). It returns the cutoff used (zero when
// nothing may be pruned) and the rows removed.
func Once(ctx context.Context, pool *pgxpool.Pool, cfg Config) (time.Time, int64, error) {
	cfg.setDefaults()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return time.Time{}, 0, err
	}
	defer conn.Release()
	var got bool
	if err := conn.QueryRow(ctx, lockSQL).Scan(&got); err != nil {
		return time.Time{}, 0, fmt.Errorf("take the pruning lock: %w", err)
	}
	if !got {
		return time.Time{}, 0, ErrBusy
	}
	defer conn.Exec(context.Background(), unlockSQL) //nolint:errcheck // the session ends the lock anyway
	cutoff, ok, err := Cutoff(ctx, pool, cfg)
	if err != nil || !ok {
		return time.Time{}, 0, err
	}
	n, err := Prune(ctx, pool, cutoff, cfg.Chunk)
	return cutoff, n, err
}

// Run prunes every interval until ctx ends, logging what it did; failures
// are logged (at most once per failLogEvery) and tried again at the next
// interval, or later: failures in a row back off, jittered, up to
// failWaitMax, whatever the interval.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config, interval time.Duration) {
	cfg.setDefaults()
	logs := lograte.New(failLogEvery)
	failures := 0
	var blocked string // logged once while it lasts
	for {
		cutoff, n, err := Once(ctx, pool, cfg)
		wait := interval
		if !errors.Is(err, ErrBlocked) {
			blocked = ""
		}
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrBusy):
		case errors.Is(err, ErrBlocked):
			if err.Error() != blocked {
				blocked = err.Error()
				cfg.Logger.Warn("not pruning processed events", "err", err)
			}
		case err != nil:
			failures++
			wait = max(interval, failWait(failures))
			logs.Log(cfg.Logger.Warn, "pruning processed events failed; trying again later", "retry_in", wait, "err", err)
		case n > 0:
			cfg.Logger.Info("pruned processed events and produced outbox rows", "rows", n, "older_than", cutoff.Format(time.RFC3339))
		}
		if err == nil {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// failLogEvery bounds how often Run logs a failure; failWaitMax bounds how
// long it waits after failures in a row.
const (
	failLogEvery = time.Minute
	failWaitMax  = time.Minute
)

// failWait is how long Run waits at least after its n-th failure in a row:
// from 1s doubling up to failWaitMax, with up to a quarter of it added at
// random so that the appliers of a group spread out.
func failWait(n int) time.Duration {
	d := failWaitMax
	if n < 7 {
		d = min(failWaitMax, time.Second<<(n-1))
	}
	return d + rand.N(d/4+1)
}
