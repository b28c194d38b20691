// Package retention prunes the processed-event table, which otherwise grows
// with every event forever, without ever removing an event ID that could
// still be needed to suppress a duplicate.
//
// A duplicate of an event reaches the topic when a client retries a command
// (same request ID, same event ID) or a producer retries a write: within the
// client's retry horizon after the original. So a row may go once both
//   - its event was written to the topic (its event_time, the record's
//     timestamp) more than Retention ago, Retention being longer than any
//     client retries (the default, 7 days, is far beyond the minutes clients
//     retry for); and
//   - every record written up to Retention after it is applied, so that no
//     duplicate still waiting in the topic meets an empty table: the cutoff
//     is Retention before the oldest record not applied yet (the record at
//     each lagging partition's applied position), or before now when none
//     lags.
//
// After the horizon a retried command is a new command: applied again. A
// GetCommandResult for a pruned request finds nothing, as for an unknown
// one. A rebuild replays every event, old ones included, and records them
// all; the pruning job of the live applier prunes them again on its next run.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/internal/lograte"
)

// DefaultRetention is how long processed events are kept by default.
const DefaultRetention = 7 * 24 * time.Hour

// lockSQL takes the advisory lock that lets one pruner run per projection
// (database and schema) at a time; unlockSQL releases it.
const (
	lockSQL   = `SELECT pg_try_advisory_lock(hashtext(current_schema() || '/heed-retention'))`
	unlockSQL = `SELECT pg_advisory_unlock(hashtext(current_schema() || '/heed-retention'))`
)

// Config configures Cutoff, Prune and Run.
type Config struct {
	Brokers   []string
	Topic     string
	KafkaOpts []kgo.Opt
	// Retention is how long after its event a processed row is kept at
	// least (default DefaultRetention).
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

// Cutoff is the safe cutoff at now: Retention before the oldest record not
// applied yet, or before now when every partition is applied to its end.
func Cutoff(ctx context.Context, pool *pgxpool.Pool, cfg Config, now time.Time) (time.Time, error) {
	cfg.setDefaults()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.KafkaOpts...)...)
	if err != nil {
		return time.Time{}, fmt.Errorf("create Kafka client: %w", err)
	}
	defer cl.Close()
	ends, err := consistency.ListEndOffsets(ctx, cl, cfg.Topic)
	if err != nil {
		return time.Time{}, err
	}
	applied, err := applier.AppliedPositions(ctx, pool, cfg.Topic)
	if err != nil {
		return time.Time{}, err
	}
	oldest := now
	lagging := map[int32]kgo.Offset{}
	for p, end := range ends {
		if applied[p] < end {
			lagging[p] = kgo.NewOffset().At(applied[p])
		}
	}
	if len(lagging) > 0 {
		t, err := firstTimestamps(ctx, cfg, lagging)
		if err != nil {
			return time.Time{}, err
		}
		if t.Before(oldest) {
			oldest = t
		}
	}
	return oldest.Add(-cfg.Retention), nil
}

// firstTimestamps reads the record at each partition's offset in at and
// returns the oldest timestamp among them.
func firstTimestamps(ctx context.Context, cfg Config, at map[int32]kgo.Offset) (time.Time, error) {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{cfg.Topic: at})}, cfg.KafkaOpts...)...)
	if err != nil {
		return time.Time{}, fmt.Errorf("create Kafka consumer: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var oldest time.Time
	seen := map[int32]bool{}
	for len(seen) < len(at) {
		fetches := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			return time.Time{}, fmt.Errorf("read the oldest records not applied yet: %w", ctx.Err())
		}
		fetches.EachRecord(func(r *kgo.Record) {
			if seen[r.Partition] {
				return
			}
			seen[r.Partition] = true
			if oldest.IsZero() || r.Timestamp.Before(oldest) {
				oldest = r.Timestamp
			}
		})
	}
	return oldest, nil
}

// Prune deletes the processed events whose event_time is before cutoff, a
// chunk per statement, records the cutoff and returns how many went.
func Prune(ctx context.Context, pool *pgxpool.Pool, cutoff time.Time, chunk int) (int64, error) {
	if chunk <= 0 {
		chunk = 10000
	}
	var total int64
	for {
		tag, err := pool.Exec(ctx, `DELETE FROM processed_events WHERE ctid = ANY (ARRAY(
SELECT ctid FROM processed_events WHERE event_time < $1 LIMIT $2))`, cutoff, chunk)
		if err != nil {
			return total, fmt.Errorf("prune processed events: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(chunk) {
			break
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
// the same projection (ErrBusy). It returns the cutoff used and the rows
// removed.
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
	cutoff, err := Cutoff(ctx, pool, cfg, time.Now())
	if err != nil {
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
	for {
		cutoff, n, err := Once(ctx, pool, cfg)
		wait := interval
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, ErrBusy):
		case err != nil:
			failures++
			wait = max(interval, failWait(failures))
			logs.Log(cfg.Logger.Warn, "pruning processed events failed; trying again later", "retry_in", wait, "err", err)
		case n > 0:
			cfg.Logger.Info("pruned processed events", "rows", n, "older_than", cutoff.Format(time.RFC3339))
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
