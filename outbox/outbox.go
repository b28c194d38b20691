// Package outbox relays the follow-up events handlers emit (applier
// Result.Emits) from the outbox table, where the applier writes them in the
// transaction that applies the emitting event, to the topic.
//
// A Relay works per origin partition, in the order the partition emitted
// its follow-ups (origin offset, then name). It produces a run of rows,
// waits for the broker's acks, and only then moves the partition's relay
// position past them (heed_outbox_relay). A relay that dies between the ack
// and the move produces the rows again: duplicates, which the applier drops
// by event ID like any retried command. A row whose follow-up the projection
// has applied already ("seen": its event ID is in processed_events) is never
// produced again. A row the broker refuses for good (too large for the topic)
// is recorded in heed_outbox_failed and counted, and the relay goes on.
//
// Nothing here is part of the projection: a rebuild replays the topic into
// the outbox, never runs a relay, and a swap carries the live relay
// positions over (package rebuild).
package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/internal/failpoint"
)

// Producer writes prebuilt records and waits for the broker's acks: one
// error per record, nil for an acknowledged one. ingest.Publisher is one
// (ProduceRecords). It must be safe for concurrent use.
type Producer interface {
	ProduceRecords(ctx context.Context, recs []*kgo.Record) []error
}

// Config configures a Relay. Topic is required.
type Config struct {
	Topic string
	// Partitions, if set, names the origin partitions to relay now (the
	// partitions an applier member owns: the relay moves with them). nil:
	// every partition that has outbox rows.
	Partitions func() []int32
	// Batch bounds the rows produced at once per partition (default 500).
	Batch int
	// Poll is how often the relay looks for rows when nothing woke it
	// (default 2s).
	Poll time.Duration
	// Logger receives the relay's logs (default: discard).
	Logger *slog.Logger
}

// Relay publishes outbox rows. Create it with New, run it with Run. Its
// methods are safe for concurrent use.
type Relay struct {
	cfg  Config
	pool *pgxpool.Pool
	prod Producer
	wake chan struct{}

	produced, failures atomic.Int64
	mu                 sync.Mutex
	backlog            Backlog
}

// New creates a Relay of cfg.Topic's outbox in pool (search_path: the
// projection's schema) through prod.
func New(pool *pgxpool.Pool, prod Producer, cfg Config) *Relay {
	if cfg.Batch <= 0 {
		cfg.Batch = 500
	}
	if cfg.Poll <= 0 {
		cfg.Poll = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, pool: pool, prod: prod, wake: make(chan struct{}, 1)}
}

// Wake makes the relay look for rows now (applier Config.OnEmit).
func (r *Relay) Wake(int32) {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Produced is how many rows the relay produced (acknowledged), Failures how
// many the broker refused for good.
func (r *Relay) Produced() int64 { return r.produced.Load() }

// Failures: see Produced.
func (r *Relay) Failures() int64 { return r.failures.Load() }

// Run relays until ctx ends; it returns nil then. A failed pass (the
// broker down, the database) is logged and tried again at the next poll
// (Config.Poll) or wake.
func (r *Relay) Run(ctx context.Context) error {
	wait := r.cfg.Poll
	for {
		err := r.Pass(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.cfg.Logger.Warn("relay pass failed; retrying", "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-r.wake:
			t.Stop()
		case <-t.C:
		}
	}
}

// Pass relays every unsent row of the relayed partitions, then measures
// the backlog. It returns the first failure.
func (r *Relay) Pass(ctx context.Context) error {
	ps, err := r.partitions(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range ps {
		for {
			n, err := r.relayPartition(ctx, p)
			if err != nil {
				errs = append(errs, fmt.Errorf("partition %d: %w", p, err))
				break
			}
			if n == 0 {
				break
			}
		}
	}
	if b, err := r.measure(ctx, ps); err == nil {
		r.mu.Lock()
		r.backlog = b
		r.mu.Unlock()
	} else {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (r *Relay) partitions(ctx context.Context) ([]int32, error) {
	if r.cfg.Partitions != nil {
		return r.cfg.Partitions(), nil
	}
	rows, err := r.pool.Query(ctx, `SELECT DISTINCT origin_partition FROM outbox WHERE topic = $1 ORDER BY 1`, r.cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("list the outbox's partitions: %w", err)
	}
	ps, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("list the outbox's partitions: %w", err)
	}
	return ps, nil
}

// row is an outbox row to relay.
type row struct {
	offset  int64
	name    string
	key     string
	typ     string
	eventID string
	value   []byte
	seen    bool
}

// pendingSQL reads a partition's rows from its relay position on, in emit
// order, saying which the projection has applied already (seen).
const pendingSQL = `SELECT o.origin_offset, o.name, o.key, o.type, o.event_id::text, o.value,
EXISTS (SELECT FROM processed_events pe WHERE pe.event_id = o.event_id AND pe.key_hash = o.key_hash) AS seen
FROM outbox o
WHERE o.topic = $1 AND o.origin_partition = $2
AND o.origin_offset >= coalesce((SELECT next_offset FROM heed_outbox_relay WHERE topic = $1 AND origin_partition = $2), 0)
AND NOT EXISTS (SELECT FROM heed_outbox_failed f WHERE f.topic = o.topic AND f.origin_partition = o.origin_partition
AND f.origin_offset = o.origin_offset AND f.name = o.name)
ORDER BY o.origin_offset, o.name LIMIT $3`

// relayPartition produces the next run of partition p's unsent rows and
// moves its relay position past them; it returns how many rows it took.
func (r *Relay) relayPartition(ctx context.Context, p int32) (int, error) {
	rows, err := r.pool.Query(ctx, pendingSQL, r.cfg.Topic, p, r.cfg.Batch+1)
	if err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	pending, err := pgx.CollectRows(rows, func(rs pgx.CollectableRow) (row, error) {
		var x row
		err := rs.Scan(&x.offset, &x.name, &x.key, &x.typ, &x.eventID, &x.value, &x.seen)
		return x, err
	})
	if err != nil {
		return 0, fmt.Errorf("read the outbox: %w", err)
	}
	if len(pending) == 0 {
		return 0, nil
	}
	if len(pending) > r.cfg.Batch {
		// Whole origin offsets only: the position moves by offset.
		last := pending[r.cfg.Batch].offset
		cut := r.cfg.Batch
		for cut > 0 && pending[cut-1].offset == last {
			cut--
		}
		if cut == 0 {
			cut = len(pending)
		}
		pending = pending[:cut]
	}
	var recs []*kgo.Record
	var idx []int
	for i, x := range pending {
		if x.seen {
			continue
		}
		recs = append(recs, &kgo.Record{Topic: r.cfg.Topic, Key: []byte(x.key), Value: x.value, Headers: []kgo.RecordHeader{
			{Key: "heed-event-type", Value: []byte(x.typ)}, {Key: "heed-event-id", Value: []byte(x.eventID)}}})
		idx = append(idx, i)
	}
	var errs []error
	if len(recs) > 0 {
		errs = r.prod.ProduceRecords(ctx, recs)
	}
	for _, err := range errs {
		if err == nil {
			failpoint.Hit("relay/after-ack")
			break
		}
	}
	// The position moves up to the first row that failed for now; rows the
	// broker refused for good are recorded and passed.
	next := pending[len(pending)-1].offset + 1
	var failed []int
	var firstErr error
	produced := 0
	for k, err := range errs {
		switch {
		case err == nil:
			if pending[idx[k]].offset < next {
				produced++
			}
		case permanent(err):
			failed = append(failed, k)
		default:
			if off := pending[idx[k]].offset; off < next {
				next = off
				firstErr = err
			}
		}
	}
	b := &pgx.Batch{}
	for _, k := range failed {
		x := pending[idx[k]]
		if x.offset >= next {
			continue // produced again after the transient failure
		}
		b.Queue(`INSERT INTO heed_outbox_failed (topic, origin_partition, origin_offset, name, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING`,
			r.cfg.Topic, p, x.offset, x.name, errs[k].Error())
		r.failures.Add(1)
		r.cfg.Logger.Error("the broker refused a follow-up for good; it is recorded in heed_outbox_failed and the relay goes on",
			"origin_partition", p, "origin_offset", x.offset, "name", x.name, "key", x.key, "err", errs[k])
	}
	b.Queue(`INSERT INTO heed_outbox_relay (topic, origin_partition, next_offset, produced) VALUES ($1, $2, $3, $4)
ON CONFLICT (topic, origin_partition) DO UPDATE SET next_offset = greatest(heed_outbox_relay.next_offset, excluded.next_offset),
produced = heed_outbox_relay.produced + excluded.produced, updated_at = now()`, r.cfg.Topic, p, next, produced)
	if err := r.pool.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("record the relay's progress: %w", err)
	}
	r.produced.Add(int64(produced))
	if firstErr != nil {
		return 0, fmt.Errorf("produce follow-ups: %w", firstErr)
	}
	return len(pending), nil
}

// permanent says whether a produce error is about the record itself, so
// that producing it again can never succeed.
func permanent(err error) bool {
	return errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) ||
		errors.Is(err, kerr.InvalidRecord) || errors.Is(err, kerr.CorruptMessage)
}

// Backlog is what the relay has not sent yet, over the partitions it
// relays.
type Backlog struct {
	// Unsent counts the rows neither produced, seen nor failed.
	Unsent int64
	// Oldest is the emitting record time of the oldest unsent row; zero
	// when none.
	Oldest time.Time
}

// Backlog is the backlog measured at the end of the last pass.
func (r *Relay) Backlog() Backlog {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.backlog
}

// measure reads the backlog of partitions ps.
func (r *Relay) measure(ctx context.Context, ps []int32) (Backlog, error) {
	var b Backlog
	var oldest *time.Time
	err := r.pool.QueryRow(ctx, `SELECT count(*), min(o.event_time) FROM outbox o
WHERE o.topic = $1 AND o.origin_partition = ANY($2)
AND o.origin_offset >= coalesce((SELECT next_offset FROM heed_outbox_relay r WHERE r.topic = $1 AND r.origin_partition = o.origin_partition), 0)
AND NOT EXISTS (SELECT FROM heed_outbox_failed f WHERE f.topic = o.topic AND f.origin_partition = o.origin_partition
AND f.origin_offset = o.origin_offset AND f.name = o.name)
AND NOT EXISTS (SELECT FROM processed_events pe WHERE pe.event_id = o.event_id AND pe.key_hash = o.key_hash)`, r.cfg.Topic, ps).Scan(&b.Unsent, &oldest)
	if err != nil {
		return b, fmt.Errorf("measure the outbox's backlog: %w", err)
	}
	if oldest != nil {
		b.Oldest = *oldest
	}
	return b, nil
}
