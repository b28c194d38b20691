package applier_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// handlers returns the counter domain in both forms the applier drives: as a
// BatchHandler (two pipelined round trips per batch) and as a plain Handler.
func handlers() []struct {
	name string
	make func(*counter) applier.Handler
} {
	return []struct {
		name string
		make func(*counter) applier.Handler
	}{
		{"batched", func(c *counter) applier.Handler { return batchCounter{c} }},
		{"plain", func(c *counter) applier.Handler { return c }},
	}
}

// stack is a fresh database migrated for the applier and the counter domain,
// whose pool counts what it sends, and an embedded broker with a one-partition
// topic.
type stack struct {
	pool   *pgxpool.Pool
	trips  *roundTrips
	broker []string
	topic  string
	cl     *kgo.Client
}

func newStack(t *testing.T) *stack { t.Helper(); return newStackPartitions(t, 1) }

// newStackPartitions is newStack with a topic of the given partitions.
func newStackPartitions(t *testing.T, partitions int32) *stack {
	t.Helper()
	s := &stack{trips: new(roundTrips), topic: "counters"}
	s.pool = counterPool(t, s.trips)
	var err error
	s.broker = testenv.Broker(t, partitions).Addrs()
	if s.cl, err = kgo.NewClient(kgo.SeedBrokers(s.broker...), kgo.DefaultProduceTopic(s.topic), kgo.AllowAutoTopicCreation()); err != nil {
		t.Fatalf("producer: %v", err)
	}
	t.Cleanup(s.cl.Close)
	return s
}

// record is an event adding inc to key's counter, with the event ID derived
// from requestID. An increment below 1 makes it poison.
func record(t testing.TB, key, requestID string, inc int64) *kgo.Record {
	t.Helper()
	payload, err := anypb.New(wrapperspb.Int64(inc))
	if err != nil {
		t.Fatal(err)
	}
	v, err := proto.Marshal(&envelopev1.Envelope{
		EventId: envelope.EventID(requestID).String(), Type: "google.protobuf.Int64Value",
		RequestId: requestID, AggregateId: key, Payload: payload,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Key: []byte(key), Value: v}
}

func (s *stack) produce(t *testing.T, recs ...*kgo.Record) {
	t.Helper()
	if err := s.cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
}

// running is an applier running in a goroutine.
type running struct {
	*applier.Applier
	cancel context.CancelFunc
	done   chan error
}

// start runs an applier member on the stack through h, stopped in t.Cleanup
// unless stopped first.
func (s *stack) start(t *testing.T, h applier.Handler, grace time.Duration) *running {
	t.Helper()
	return s.startConfig(t, h, applier.Config{ShutdownGrace: grace})
}

// startConfig is start with cfg's settings; it fills in the stack's broker,
// topic, group and, unless cfg has one, a logger.
func (s *stack) startConfig(t *testing.T, h applier.Handler, cfg applier.Config) *running {
	t.Helper()
	cfg.Brokers, cfg.Topic, cfg.Group = s.broker, s.topic, "counters"
	if cfg.Logger == nil {
		cfg.Logger = testenv.Logger(t)
	}
	a, err := applier.New(cfg, s.pool, h)
	if err != nil {
		t.Fatalf("applier: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{Applier: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.stop(t, 30*time.Second) })
	return r
}

// stop ends Run and reports how long it took to return; it fails the test if
// Run does not return within limit. Calling it again returns 0.
func (r *running) stop(t *testing.T, limit time.Duration) time.Duration {
	t.Helper()
	if r.done == nil {
		return 0
	}
	start := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("applier run: %v", err)
		}
	case <-time.After(limit):
		t.Errorf("applier did not stop within %v", limit)
	}
	r.done = nil
	return time.Since(start)
}

// value runs a query returning one int64.
func (s *stack) value(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := s.pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// position is the partition's applied position.
func (s *stack) position(t *testing.T) int64 {
	t.Helper()
	return s.value(t, `SELECT coalesce(max(next_offset), 0) FROM applied_positions WHERE topic = $1 AND partition = 0`, s.topic)
}

// counters returns every counter's value.
func (s *stack) counters(t *testing.T) map[string]int64 {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), `SELECT key, n FROM counters`)
	if err != nil {
		t.Fatalf("read counters: %v", err)
	}
	out := make(map[string]int64)
	if err := scanCounters(rows, out); err != nil {
		t.Fatalf("read counters: %v", err)
	}
	return out
}

// state is what the database holds after a run: the counters, the rows of
// processed_events and quarantine, and the partition's applied position.
type state struct {
	counters               map[string]int64
	processed, quarantined int64
	position               int64
}

// checkState reports every way the database differs from want.
func (s *stack) checkState(t *testing.T, want state) {
	t.Helper()
	if got := s.counters(t); !maps.Equal(got, want.counters) {
		t.Errorf("counters = %v, want %v (each event applied once)", got, want.counters)
	}
	if n := s.value(t, `SELECT count(*) FROM processed_events`); n != want.processed {
		t.Errorf("processed_events has %d rows, want %d", n, want.processed)
	}
	if n := s.value(t, `SELECT count(*) FROM quarantine`); n != want.quarantined {
		t.Errorf("quarantine has %d rows, want %d", n, want.quarantined)
	}
	if p := s.position(t); p != want.position {
		t.Errorf("applied position = %d, want %d", p, want.position)
	}
}

// checkNoOpenTransaction checks that no session on the test database is left
// inside a transaction (waiting a little for connections being closed), and
// that every idle connection in the pool is outside one.
func (s *stack) checkNoOpenTransaction(t *testing.T) {
	t.Helper()
	testenv.Eventually(t, 10*time.Second, func() string {
		var n int64
		var states []string
		err := s.pool.QueryRow(t.Context(), `SELECT count(*), coalesce(array_agg(state || ': ' || query), '{}') FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL`).Scan(&n, &states)
		if err != nil {
			return fmt.Sprintf("read pg_stat_activity: %v", err)
		}
		if n != 0 {
			return fmt.Sprintf("%d sessions are inside a transaction: %s", n, strings.Join(states, "; "))
		}
		return ""
	})
	for _, c := range s.pool.AcquireAllIdle(t.Context()) {
		if st := c.Conn().PgConn().TxStatus(); st != 'I' {
			t.Errorf("an idle pooled connection has transaction status %q, want 'I'", st)
		}
		c.Release()
	}
}

// roundTrips counts what a pool sends: batches (one round trip each, once
// their statements are prepared), COPYs (two) and single statements, leaving
// out those the applier runs when it starts and when partitions are assigned
// (on applied_positions, topic_identity and heed_dedup_window, and the look for
// keyless rows).
type roundTrips struct {
	batches, queries, copies atomic.Int64
}

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if !strings.Contains(d.SQL, "applied_positions") && !strings.Contains(d.SQL, "topic_identity") && !strings.Contains(d.SQL, "key_hash = 0") && !strings.Contains(d.SQL, "heed_dedup_window") {
		r.queries.Add(1)
	}
	return ctx
}

func (r *roundTrips) TraceCopyFromStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceCopyFromStartData) context.Context {
	r.copies.Add(1)
	return ctx
}

func (*roundTrips) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}

func (*roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.batches.Add(1)
	return ctx
}

func (*roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (*roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}

// lockPosition sets partition's applied position to 0 and locks its row in a
// transaction it returns, rolled back at the end of the test if not before: the
// applier's compare-and-set on that partition waits until then.
func (s *stack) lockPosition(t *testing.T, partition int32) pgx.Tx {
	t.Helper()
	return s.lockPositionAt(t, partition, 0)
}

// lockPositionAt is lockPosition for a partition whose applied position is,
// or is set to, pos.
func (s *stack) lockPositionAt(t *testing.T, partition int32, pos int64) pgx.Tx {
	t.Helper()
	ctx := t.Context()
	if _, err := s.pool.Exec(ctx, `INSERT INTO applied_positions (topic, partition, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset`, s.topic, partition, pos); err != nil {
		t.Fatal(err)
	}
	lock, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lock.Rollback(context.Background()) }) // a no-op once rolled back
	if _, err := lock.Exec(ctx, `SELECT * FROM applied_positions WHERE topic = $1 AND partition = $2 FOR UPDATE`, s.topic, partition); err != nil {
		t.Fatal(err)
	}
	return lock
}

// partitionProducer returns a function producing, and waiting for, a record of
// key and requestID (adding 1) to the given partition of the stack's topic.
func (s *stack) partitionProducer(t *testing.T) func(partition int32, key, requestID string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.broker...), kgo.DefaultProduceTopic(s.topic),
		kgo.AllowAutoTopicCreation(), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return func(partition int32, key, requestID string) {
		t.Helper()
		r := record(t, key, requestID, 1)
		r.Partition = partition
		if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatalf("produce to partition %d: %v", partition, err)
		}
	}
}

// waitCompareAndSets waits until each of locks (from lockPosition) holds up
// exactly one session, running the applier's compare-and-set: its
// partition's batch, stuck inside its transaction slot. what names them in
// the failure message. Counting the sessions that wait for any lock would
// not do: others wait a moment too (an applier's start and its first
// assignment race to record the topic identity and the dedup window).
func (s *stack) waitCompareAndSets(t *testing.T, what string, locks ...pgx.Tx) {
	t.Helper()
	waitBlocked(t, s.pool, applier.CompareAndSetSQL, what, locks...)
}

// waitBlocked waits until each of holders (the test's transactions holding
// locks) holds up exactly one session of pool's database, one running query
// (its text as sent) and waiting for a lock the holder has. what names them
// in the failure message.
func waitBlocked(t *testing.T, pool *pgxpool.Pool, query, what string, holders ...pgx.Tx) {
	t.Helper()
	pids := make([]int32, len(holders))
	for i, h := range holders {
		pids[i] = int32(h.Conn().PgConn().PID())
	}
	testenv.Eventually(t, 20*time.Second, func() string {
		var held []int64
		err := pool.QueryRow(t.Context(), `SELECT array_agg((SELECT count(*) FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' AND a.query = $1 AND h = ANY(pg_blocking_pids(a.pid))) ORDER BY i)
FROM unnest($2::int[]) WITH ORDINALITY AS u(h, i)`, query, pids).Scan(&held)
		if err != nil {
			return fmt.Sprintf("read pg_stat_activity: %v", err)
		}
		for _, n := range held {
			if n != 1 {
				return fmt.Sprintf("sessions held up by each lock: %v, want 1 each (%s)", held, what)
			}
		}
		return ""
	})
}

// counterPool is a pool on a fresh database migrated for the applier and
// the counter domain, tracing its queries through tracer if not nil.
func counterPool(t *testing.T, tracer pgx.QueryTracer) *pgxpool.Pool {
	t.Helper()
	ctx := t.Context()
	cfg, err := schema.PoolConfig(testenv.PostgresURL(t), schema.Default, 8)
	if err != nil {
		t.Fatalf("pool config: %v", err)
	}
	if tracer != nil {
		cfg.ConnConfig.Tracer = tracer
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}, {Name: "topic", FS: topic.Migrations}}
	if err := schema.Migrate(ctx, pool, schema.Default, sets, testenv.Logger(t)); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := pool.Exec(ctx, counterTableSQL); err != nil {
		t.Fatalf("create counters: %v", err)
	}
	return pool
}
