package applier_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// decide produces the control record of an operator's decision about the
// record at offset of partition 0, and returns its offset.
func (s *stack) decide(t *testing.T, action envelopev1.QuarantineAction, offset int64, reason string) int64 {
	t.Helper()
	rec, err := applier.DecisionRecord(s.topic, []byte("c"), &envelopev1.QuarantineDecision{Action: action, Partition: 0, Offset: offset, Reason: reason})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cl.ProduceSync(t.Context(), rec).FirstErr(); err != nil {
		t.Fatalf("produce the decision: %v", err)
	}
	return rec.Offset
}

// decision waits until the applier on pool carried out the control record at
// offset of partition 0, and returns what it did.
func decision(t *testing.T, pool *pgxpool.Pool, topicName string, offset int64) applier.Decision {
	t.Helper()
	var d applier.Decision
	testenv.Eventually(t, 20*time.Second, func() string {
		var found bool
		var err error
		if d, found, err = applier.DecisionResult(t.Context(), pool, topicName, 0, offset); err != nil {
			return err.Error()
		}
		if !found {
			return fmt.Sprintf("the decision at offset %d is not carried out", offset)
		}
		return ""
	})
	return d
}

// projection is what a projection of the counter domain holds, for
// comparing a live one with its replay.
type projection struct {
	counters   map[string]int64
	quarantine []string
	processed  []string
	decisions  []string
	position   int64
}

func readProjection(t *testing.T, pool *pgxpool.Pool, topicName string) projection {
	t.Helper()
	ctx := t.Context()
	strs := func(sql string, args ...any) []string {
		rows, err := pool.Query(ctx, sql, args...)
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		return out
	}
	p := projection{counters: map[string]int64{}}
	rows, err := pool.Query(ctx, `SELECT key, n FROM counters`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		p.counters[k] = n
	}
	rows.Close()
	p.quarantine = strs(`SELECT format('%s %s %s %s %s', "offset", kind, state, convert_from(key, 'UTF8'), reason) FROM quarantine WHERE topic = $1 ORDER BY "offset"`, topicName)
	p.processed = strs(`SELECT format('%s %s %s %s', event_id, aggregate, status, reason) FROM processed_events ORDER BY event_id, aggregate`)
	p.decisions = strs(`SELECT format('%s %s %s %s %s/%s/%s %s %s %s %s', "offset", action, target, convert_from(key, 'UTF8'), applied, duplicates, conflicts, dropped, poison, parked, note)
FROM quarantine_decisions WHERE topic = $1 ORDER BY "offset"`, topicName)
	if err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM applied_positions WHERE topic = $1`, topicName).Scan(&p.position); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p projection) diff(q projection) string {
	var d string
	if !maps.Equal(p.counters, q.counters) {
		d += fmt.Sprintf("counters %v != %v\n", p.counters, q.counters)
	}
	for _, c := range []struct {
		name string
		a, b []string
	}{{"quarantine", p.quarantine, q.quarantine}, {"processed", p.processed, q.processed}, {"decisions", p.decisions, q.decisions}} {
		if !slices.Equal(c.a, c.b) {
			d += fmt.Sprintf("%s:\n  %q\n  %q\n", c.name, c.a, c.b)
		}
	}
	if p.position != q.position {
		d += fmt.Sprintf("position %d != %d\n", p.position, q.position)
	}
	return d
}

// An operator's drops and re-drives are control records in the topic,
// carried out by the applier when it reaches them: the live projection and a
// replay of the topic into a fresh one (what heed rebuild does) agree on
// every counter, quarantine row, outcome and decision. A decision about a
// record no longer open does nothing and says so, alike in both; records of
// the key after a decision apply after what it released, in log order.
func TestDecisionsReplay(t *testing.T) {
	s, c, app := poisonedKey(t) // offsets 0-5: c's poison at 2, c2 and c3 parked at 3 and 5

	// A re-drive without a fix: the record is still poison, nothing applies.
	d := decision(t, s.pool, s.topic, s.decide(t, envelopev1.QuarantineAction_QUARANTINE_ACTION_REDRIVE, 2, "")) // 6
	if d.Note != "" || d.Result.Poison != 2 || d.Result.Parked != 2 || d.Result.Applied != 0 {
		t.Errorf("re-drive before a fix = %+v, want offset 2 still poison with 2 parked", d)
	}
	s.produce(t, record(t, "c", "c4", 100))                                                                          // 7: parked too
	d = decision(t, s.pool, s.topic, s.decide(t, envelopev1.QuarantineAction_QUARANTINE_ACTION_DROP, 2, "ticket 7")) // 8
	if d.Note != "" || d.Result.Dropped != 2 || d.Result.Applied != 3 || d.Result.Poison != -1 {
		t.Errorf("drop = %+v, want offset 2 dropped and c2, c3, c4 applied", d)
	}
	s.produce(t, record(t, "c", "c5", 1000), record(t, "c", "c2", 1))                                             // 9, 10: applied, then a duplicate
	d = decision(t, s.pool, s.topic, s.decide(t, envelopev1.QuarantineAction_QUARANTINE_ACTION_DROP, 2, "again")) // 11
	if d.Note == "" || d.Result.Dropped != -1 {
		t.Errorf("a second drop of offset 2 = %+v, want nothing done and a note saying why", d)
	}
	// A malformed control record decides nothing and stalls nothing.
	if err := s.cl.ProduceSync(t.Context(), &kgo.Record{Key: []byte("c"), Value: []byte("garbage"),
		Headers: []kgo.RecordHeader{{Key: applier.ControlHeader, Value: []byte(applier.DecisionControl)}}}).FirstErr(); err != nil { // 12
		t.Fatal(err)
	}
	d = decision(t, s.pool, s.topic, 12)
	if d.Note == "" {
		t.Errorf("malformed decision = %+v, want a note", d)
	}
	s.produce(t, record(t, "a", "a3", 4)) // 13
	testenv.Eventually(t, 20*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": 7, "c": 5 + 1 + 1 + 100 + 1000}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		if pos := s.position(t); pos != 14 {
			return fmt.Sprintf("position %d, want 14", pos)
		}
		return ""
	})
	app.stop(t, 30*time.Second)
	live := readProjection(t, s.pool, s.topic)

	// The replay, in batches of every size, reaches the same projection.
	for _, size := range []int{1, 3, 1000} {
		t.Run(fmt.Sprintf("batch=%d", size), func(t *testing.T) {
			pool := counterPool(t, nil) // what a rebuild replays the topic into
			cfg := applier.Config{Brokers: s.broker, Topic: s.topic, Group: fmt.Sprintf("replay-%d", size), Logger: testenv.Logger(t), MaxBatchRecords: size}
			a, err := applier.New(cfg, pool, batchCounter{c})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			testenv.Eventually(t, 30*time.Second, func() string {
				if diff := live.diff(readProjection(t, pool, s.topic)); diff != "" {
					return "the replay differs from the live projection:\n" + diff
				}
				return ""
			})
			cancel()
			if err := <-done; err != nil {
				t.Errorf("replay applier: %v", err)
			}
		})
	}
}
