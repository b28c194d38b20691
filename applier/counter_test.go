package applier_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/applier"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// counter is a domain for testing the applier: each event adds its payload, a
// google.protobuf.Int64Value of at least 1, to the counter its key names. A
// *counter is a plain Handler (its Apply talks to the database statement by
// statement); batchCounter makes it a BatchHandler. Its switches inject
// failures; it is safe for concurrent use.
//
// Two increments are poison that decoding cannot see: tooBig makes the
// counter break the table's CHECK in Postgres (an error an event causes, found
// by splitting the batch), and unlucky makes the handler reject its event with
// applier.Quarantine.
type counter struct {
	// fail makes applying return errInjected while set.
	fail atomic.Bool
	// violate makes applying also run a statement that fails in Postgres with
	// a serialization failure (SQLSTATE 40001, transient) while set.
	violate atomic.Bool
	// checkOnce makes the next application also run a statement that fails
	// with a check violation (SQLSTATE 23514, an error an event may cause),
	// once.
	checkOnce atomic.Bool
	// failed counts the applications that failed on purpose.
	failed atomic.Int64
	// applies and queues count the calls of Apply and of Loaded.Queue.
	applies, queues atomic.Int64
}

// batchCounter is the counter as a BatchHandler.
type batchCounter struct{ *counter }

var (
	_ applier.Handler      = (*counter)(nil)
	_ applier.BatchHandler = batchCounter{}
)

var errInjected = errors.New("injected failure")

const (
	counterTableSQL = `CREATE TABLE counters (key text PRIMARY KEY, n bigint NOT NULL CHECK (n >= 0 AND n < 1000000))`
	readCountersSQL = `SELECT key, n FROM counters WHERE key = ANY($1::text[])`
	writeCounterSQL = `INSERT INTO counters (key, n) SELECT * FROM unnest($1::text[], $2::int8[])
ON CONFLICT (key) DO UPDATE SET n = excluded.n`
	violateSQL = `DO $$ BEGIN RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001'; END $$`
	checkSQL   = `DO $$ BEGIN RAISE EXCEPTION 'injected check violation' USING ERRCODE = 'check_violation'; END $$`

	// tooBig is an increment that takes a counter past the table's CHECK.
	tooBig = 1_000_000
	// unlucky is an increment the handler quarantines.
	unlucky = 777
)

// Decode returns the increment, or why the record can never apply.
func (*counter) Decode(env *envelopev1.Envelope) (any, error) {
	if env.GetType() != "google.protobuf.Int64Value" {
		return nil, fmt.Errorf("unknown event type %q", env.GetType())
	}
	var v wrapperspb.Int64Value
	if err := proto.Unmarshal(env.GetPayload().GetValue(), &v); err != nil {
		return nil, fmt.Errorf("invalid payload: %v", err)
	}
	if v.GetValue() < 1 {
		return nil, fmt.Errorf("increment %d is below 1", v.GetValue())
	}
	return v.GetValue(), nil
}

// Apply reads the counters with one query and writes them with one statement.
func (c *counter) Apply(ctx context.Context, tx pgx.Tx, events []applier.Event) ([]applier.Result, error) {
	c.applies.Add(1)
	rows, err := tx.Query(ctx, readCountersSQL, keys(events))
	if err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	n := make(map[string]int64)
	if err := scanCounters(rows, n); err != nil {
		return nil, fmt.Errorf("read counters: %w", err)
	}
	ks, vs, violate, err := c.decide(events, n)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, writeCounterSQL, ks, vs); err != nil {
		return nil, fmt.Errorf("write counters: %w", err)
	}
	if violate {
		if _, err := tx.Exec(ctx, violateSQL); err != nil {
			return nil, fmt.Errorf("write counters: %w", err)
		}
	}
	return nil, nil
}

// Load queues the read of the counters events touch.
func (c batchCounter) Load(b *pgx.Batch, events []applier.Event) applier.Loaded {
	l := &counterLoad{c: c.counter}
	b.Queue(readCountersSQL, keys(events)).Query(func(rows pgx.Rows) error {
		n := make(map[string]int64)
		if err := scanCounters(rows, n); err != nil {
			return err
		}
		l.n = n
		return nil
	})
	return l
}

// counterLoad is what batchCounter.Load read.
type counterLoad struct {
	c *counter
	n map[string]int64 // nil until the read arrived
}

func (l *counterLoad) Queue(events []applier.Event, b *pgx.Batch) ([]applier.Result, error) {
	l.c.queues.Add(1)
	if l.n == nil {
		return nil, errors.New("the counters were not read")
	}
	ks, vs, violate, err := l.c.decide(events, l.n)
	if err != nil {
		return nil, err
	}
	b.Queue(writeCounterSQL, ks, vs)
	if violate {
		b.Queue(violateSQL)
	}
	if l.c.checkOnce.CompareAndSwap(true, false) {
		b.Queue(checkSQL)
	}
	return nil, nil
}

// decide adds events to the counters in n and returns the counters to write,
// whether to also write one below zero, or errInjected.
func (c *counter) decide(events []applier.Event, n map[string]int64) (ks []string, vs []int64, violate bool, err error) {
	if c.fail.Load() {
		c.failed.Add(1)
		return nil, nil, false, errInjected
	}
	for _, ev := range events {
		if ev.Payload.(int64) == unlucky {
			return nil, nil, false, applier.Quarantine(ev, "the counter does not take 777")
		}
		n[ev.AggregateID] += ev.Payload.(int64)
	}
	ks = keys(events)
	slices.Sort(ks)
	for _, k := range ks {
		vs = append(vs, n[k])
	}
	violate = c.violate.Load()
	if violate {
		c.failed.Add(1)
	}
	return ks, vs, violate, nil
}

func keys(events []applier.Event) []string {
	var ks []string
	for _, ev := range events {
		if !slices.Contains(ks, ev.AggregateID) {
			ks = append(ks, ev.AggregateID)
		}
	}
	return ks
}

func scanCounters(rows pgx.Rows, n map[string]int64) error {
	defer rows.Close()
	for rows.Next() {
		var (
			k string
			v int64
		)
		if err := rows.Scan(&k, &v); err != nil {
			return err
		}
		n[k] = v
	}
	return rows.Err()
}
