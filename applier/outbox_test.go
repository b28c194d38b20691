package applier_test

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/outbox"
	"github.com/heed-dev/heed/rebuild"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// The emitter domain is the counter's, whose events on a key starting with
// "a-" also emit a follow-up named "echo": the same increment, to the key
// "b-" + the key. emitBad, when set, makes every emit of the first event
// of a batch invalid in the way it names.
type emitter struct {
	*counter
	bad string
}

type batchEmitter struct {
	batchCounter
	bad string
}

var (
	_ applier.Handler      = emitter{}
	_ applier.BatchHandler = batchEmitter{}
)

func (e emitter) Apply(ctx context.Context, tx pgx.Tx, events []applier.Event) ([]applier.Result, error) {
	res, err := e.counter.Apply(ctx, tx, events)
	return withEmits(events, res, e.bad), err
}

func (e batchEmitter) Load(b *pgx.Batch, events []applier.Event) applier.Loaded {
	return emitterLoad{e.batchCounter.Load(b, events), e.bad}
}

type emitterLoad struct {
	applier.Loaded
	bad string
}

func (l emitterLoad) Queue(events []applier.Event, b *pgx.Batch) ([]applier.Result, error) {
	res, err := l.Loaded.Queue(events, b)
	return withEmits(events, res, l.bad), err
}

func withEmits(events []applier.Event, res []applier.Result, bad string) []applier.Result {
	if res == nil {
		res = make([]applier.Result, len(events))
	}
	for i, ev := range events {
		if !strings.HasPrefix(ev.AggregateID, "a-") {
			continue
		}
		e := applier.Emit{Name: "echo", Key: "b-" + ev.AggregateID, Event: wrapperspb.Int64(ev.Payload.(int64))}
		res[i].Emits = []applier.Emit{e}
		switch bad {
		case "twice":
			res[i].Emits = append(res[i].Emits, e)
		case "huge":
			res[i].Emits[0].Key = strings.Repeat("k", 1000)
		}
	}
	return res
}

func emitters() []struct {
	name string
	make func(bad string) applier.Handler
} {
	return []struct {
		name string
		make func(bad string) applier.Handler
	}{
		{"batched", func(bad string) applier.Handler { return batchEmitter{batchCounter{new(counter)}, bad} }},
		{"plain", func(bad string) applier.Handler { return emitter{new(counter), bad} }},
	}
}

// outboxRow is an outbox row as stored.
type storedRow struct {
	partition int32
	offset    int64
	name      string
	eventID   uuid.UUID
	key       string
	value     []byte
}

func (s *stack) outbox(t *testing.T) []storedRow {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), `SELECT origin_partition, origin_offset, name, event_id, key, value FROM outbox ORDER BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (storedRow, error) {
		var x storedRow
		err := r.Scan(&x.partition, &x.offset, &x.name, &x.eventID, &x.key, &x.value)
		return x, err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// publisher is an ingest.Publisher on the stack's topic.
func (s *stack) publisher(t *testing.T) *ingest.Publisher {
	t.Helper()
	p, err := ingest.NewPublisher(ingest.Config{Brokers: s.broker, Topic: s.topic, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// ends is the sum of the topic's end offsets.
func (s *stack) ends(t *testing.T) int64 {
	t.Helper()
	ends, err := kadm.NewClient(s.cl).ListEndOffsets(t.Context(), s.topic)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// waitFor polls cond until it returns "", failing the test with its last
// answer after a minute.
func waitFor(t *testing.T, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An event's follow-up is written to the outbox in its transaction, with an
// envelope derived from the event alone; the relay produces it once, and the
// applier applies it once. Another projection replaying the topic writes the
// same bytes, and its relay produces nothing (every follow-up is seen).
func TestOutboxEmitAndRelay(t *testing.T) {
	for _, hc := range emitters() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStack(t)
			ids := envelope.Space("emitter")
			var relay *outbox.Relay
			cfg := applier.Config{IDs: ids, OnEmit: func(p int32) { relay.Wake(p) }}
			r := s.startConfig(t, hc.make(""), cfg)
			relay = outbox.New(s.pool, s.publisher(t), outbox.Config{Topic: s.topic, Partitions: r.Partitions, Poll: 50 * time.Millisecond, Logger: testenv.Logger(t)})
			ctx, cancel := context.WithCancel(context.Background())
			relayDone := make(chan struct{})
			go func() { relay.Run(ctx); close(relayDone) }() //nolint:errcheck // Run returns nil when ctx ends
			t.Cleanup(func() { cancel(); <-relayDone })

			s.produce(t, record(t, "a-1", "r1", 5), record(t, "a-2", "r2", 3), record(t, "c", "r3", 1))
			want := map[string]int64{"a-1": 5, "a-2": 3, "c": 1, "b-a-1": 5, "b-a-2": 3}
			waitFor(t, func() string {
				if got := s.counters(t); len(got) != len(want) || got["b-a-1"] != 5 || got["b-a-2"] != 3 {
					return fmt.Sprintf("follow-ups not applied: counters %v", got)
				}
				return ""
			})
			waitFor(t, func() string {
				// The relay counts what it produced once it recorded it,
				// which may be after the applier applied it.
				if b := relay.Backlog(); b.Unsent != 0 || relay.Produced() < 2 {
					return fmt.Sprintf("relay backlog %d, produced %d", b.Unsent, relay.Produced())
				}
				return ""
			})
			if err := relay.Pass(t.Context()); err != nil { // one more pass: nothing left to send
				t.Fatal(err)
			}
			s.checkState(t, state{counters: want, processed: 5, position: 5})
			if n := relay.Produced(); n != 2 {
				t.Errorf("relay produced %d follow-ups, want 2", n)
			}
			if n := s.ends(t); n != 5 {
				t.Errorf("topic holds %d records, want 5 (3 commands, 2 follow-ups, each once)", n)
			}

			// The rows are what FollowUpEnvelope builds from the event.
			rows := s.outbox(t)
			if len(rows) != 2 {
				t.Fatalf("outbox has %d rows, want 2", len(rows))
			}
			for i, row := range rows {
				origin := applier.Event{ID: envelope.EventID([]string{"r1", "r2"}[i]), AggregateID: []string{"a-1", "a-2"}[i], Time: recordTime(t, s, row.offset)}
				env, err := applier.FollowUpEnvelope(ids, origin, applier.Emit{Name: "echo", Key: row.key, Event: wrapperspb.Int64([]int64{5, 3}[i])})
				if err != nil {
					t.Fatal(err)
				}
				wantValue, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
				if err != nil {
					t.Fatal(err)
				}
				if row.offset != int64(i) || row.name != "echo" || !bytes.Equal(row.value, wantValue) ||
					row.eventID != ids.EventID(applier.FollowUpRequestID(origin.ID, origin.AggregateID, "echo")) {
					t.Errorf("outbox row %d = %+v, want the follow-up built from the event at offset %d", i, row, i)
				}
			}
			r.stop(t, 30*time.Second)
			cancel()
			<-relayDone

			// A replay into another projection writes the same rows and
			// finds nothing to send.
			s2 := &stack{trips: new(roundTrips), topic: s.topic, broker: s.broker, cl: s.cl}
			s2.pool = counterPool(t, s2.trips)
			cfg2 := applier.Config{IDs: ids, Brokers: s.broker, Topic: s.topic, Group: "replay", Logger: testenv.Logger(t)}
			a2, err := applier.New(cfg2, s2.pool, hc.make(""))
			if err != nil {
				t.Fatal(err)
			}
			ctx2, cancel2 := context.WithCancel(context.Background())
			done2 := make(chan error, 1)
			go func() { done2 <- a2.Run(ctx2) }()
			waitFor(t, func() string {
				if s2.position(t) != 5 {
					return "replay did not reach the topic's end"
				}
				return ""
			})
			cancel2()
			if err := <-done2; err != nil {
				t.Fatal(err)
			}
			replayed := s2.outbox(t)
			if len(replayed) != len(rows) {
				t.Fatalf("replayed outbox has %d rows, want %d", len(replayed), len(rows))
			}
			for i := range rows {
				if !bytes.Equal(rows[i].value, replayed[i].value) || rows[i].eventID != replayed[i].eventID {
					t.Errorf("replayed outbox row %d differs from the live one", i)
				}
			}
			r2 := outbox.New(s2.pool, s.publisher(t), outbox.Config{Topic: s.topic})
			if err := r2.Pass(t.Context()); err != nil {
				t.Fatal(err)
			}
			if n, b := r2.Produced(), r2.Backlog(); n != 0 || b.Unsent != 0 {
				t.Errorf("a relay of the replayed projection produced %d and has %d unsent, want none: every follow-up was seen", n, b.Unsent)
			}
			if n := s.ends(t); n != 5 {
				t.Errorf("topic holds %d records after the replay, want 5", n)
			}
		})
	}
}

// recordTime is the stored record time of the projection's partition 0 at
// offset: the applier's record time of the event there.
func recordTime(t *testing.T, s *stack, offset int64) time.Time {
	t.Helper()
	var at time.Time
	if err := s.pool.QueryRow(t.Context(), `SELECT event_time FROM outbox WHERE origin_partition = 0 AND origin_offset = $1`, offset).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// A relay that produced follow-ups but did not record it (a crash between
// the ack and the mark) produces them again: the applier drops the
// duplicates by event ID, and each follow-up is applied once.
func TestOutboxDuplicatesHarmless(t *testing.T) {
	s := newStack(t)
	r := s.startConfig(t, batchEmitter{batchCounter{new(counter)}, ""}, applier.Config{})
	s.produce(t, record(t, "a-1", "r1", 5))
	waitFor(t, func() string {
		if s.value(t, `SELECT count(*) FROM outbox`) != 1 {
			return "no outbox row"
		}
		return ""
	})
	// Produce the row twice, as two relays would (the first one's mark
	// lost), while the follow-up is not applied yet.
	r.stop(t, 30*time.Second)
	pub := s.publisher(t)
	for range 2 {
		relay := outbox.New(s.pool, pub, outbox.Config{Topic: s.topic})
		if err := relay.Pass(t.Context()); err != nil {
			t.Fatal(err)
		}
		if relay.Produced() != 1 {
			t.Fatalf("relay produced %d, want 1", relay.Produced())
		}
		if _, err := s.pool.Exec(t.Context(), `DELETE FROM heed_outbox_relay`); err != nil {
			t.Fatal(err)
		}
	}
	r = s.startConfig(t, batchEmitter{batchCounter{new(counter)}, ""}, applier.Config{})
	waitFor(t, func() string {
		if s.position(t) != 3 {
			return "the follow-ups were not consumed"
		}
		return ""
	})
	s.checkState(t, state{counters: map[string]int64{"a-1": 5, "b-a-1": 5}, processed: 2, position: 3})
	if st := r.Stats(); st.Duplicates != 1 {
		t.Errorf("applier found %d duplicates, want 1", st.Duplicates)
	}
	// The follow-up is seen now: a relay that lost its position sends
	// nothing.
	relay := outbox.New(s.pool, pub, outbox.Config{Topic: s.topic})
	if err := relay.Pass(t.Context()); err != nil {
		t.Fatal(err)
	}
	if relay.Produced() != 0 || s.ends(t) != 3 {
		t.Errorf("relay produced %d, topic holds %d records: want 0 and 3", relay.Produced(), s.ends(t))
	}
}

// An emit that could never be produced quarantines the event that emits it:
// the relay never meets it.
func TestOutboxEmitPoison(t *testing.T) {
	for _, bad := range []string{"twice", "huge"} {
		for _, hc := range emitters() {
			t.Run(bad+"/"+hc.name, func(t *testing.T) {
				s := newStack(t)
				s.startConfig(t, hc.make(bad), applier.Config{MaxEmitBytes: 512})
				s.produce(t, record(t, "a-1", "r1", 5), record(t, "c", "r2", 1))
				waitFor(t, func() string {
					if s.position(t) != 2 {
						return "batch not applied"
					}
					return ""
				})
				s.checkState(t, state{counters: map[string]int64{"c": 1}, processed: 1, quarantined: 1, position: 2})
				if n := s.value(t, `SELECT count(*) FROM outbox`); n != 0 {
					t.Errorf("outbox has %d rows, want none", n)
				}
				var reason string
				if err := s.pool.QueryRow(t.Context(), `SELECT reason FROM quarantine`).Scan(&reason); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(reason, "follow-up") {
					t.Errorf("quarantine reason %q does not name the follow-up", reason)
				}
			})
		}
	}
}

// A rebuild replays the topic into the outbox without publishing: the
// topic's end offsets stay, --verify finds the outbox equal, and after the
// swap the relay (its progress carried over) sends nothing.
func TestOutboxRebuild(t *testing.T) {
	ctx := t.Context()
	dbURL := testenv.PostgresURL(t)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}, {Name: "topic", FS: topic.Migrations},
		{Name: "counters", FS: fstest.MapFS{"00001_counters.sql": {Data: []byte("-- +goose Up\n" + counterTableSQL + ";\n-- +goose Down\nDROP TABLE counters;\n")}}}}
	pool, err := schema.Connect(ctx, dbURL, schema.Default, 8)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool, schema.Default, sets, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	s := &stack{pool: pool, trips: new(roundTrips), topic: "counters", broker: testenv.Broker(t, 2).Addrs()}
	if s.cl, err = kgo.NewClient(kgo.SeedBrokers(s.broker...), kgo.DefaultProduceTopic(s.topic), kgo.AllowAutoTopicCreation()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.cl.Close)
	h := batchEmitter{batchCounter{new(counter)}, ""}
	var relay *outbox.Relay
	r := s.startConfig(t, h, applier.Config{OnEmit: func(p int32) { relay.Wake(p) }})
	pub := s.publisher(t)
	relay = outbox.New(pool, pub, outbox.Config{Topic: s.topic, Partitions: r.Partitions, Poll: 50 * time.Millisecond})
	rctx, cancel := context.WithCancel(context.Background())
	relayDone := make(chan struct{})
	go func() { relay.Run(rctx); close(relayDone) }() //nolint:errcheck // Run returns nil when ctx ends
	t.Cleanup(func() { cancel(); <-relayDone })
	for i := range 20 {
		s.produce(t, record(t, fmt.Sprint("a-", i), fmt.Sprint("r", i), int64(i+1)))
	}
	waitFor(t, func() string {
		c := s.counters(t)
		if len(c) != 40 {
			return fmt.Sprintf("%d counters, want 40 (20 events and their follow-ups)", len(c))
		}
		return ""
	})
	ends := s.ends(t)
	if ends != 40 {
		t.Fatalf("topic holds %d records, want 40", ends)
	}

	reb, err := rebuild.Open(ctx, rebuild.Config{DatabaseURL: dbURL, Live: schema.Default, Into: "rebuilt", Sets: sets, Handler: h,
		Applier: applier.Config{Brokers: s.broker, Topic: s.topic, Group: "counters"}, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer reb.Close()
	if _, err := reb.CatchUp(ctx, true); err != nil {
		t.Fatal(err)
	}
	rep, err := reb.Verify(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	compared := false
	for _, tr := range rep.Tables {
		if tr.Table == "outbox" {
			compared = tr.Equal && tr.LiveRows == 20
		}
	}
	if !compared {
		t.Errorf("verify did not find the outbox's 20 rows equal: %+v", rep.Tables)
	}
	if n := s.ends(t); n != ends {
		t.Errorf("the rebuild moved the topic's end from %d to %d records: it published", ends, n)
	}
	// Its outbox rows are the live ones, byte for byte.
	var differ int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM (SELECT * FROM heed.outbox EXCEPT SELECT * FROM rebuilt.outbox) d`).Scan(&differ); err != nil || differ != 0 {
		t.Errorf("%d live outbox rows not in the rebuilt outbox (%v)", differ, err)
	}

	cancel()
	<-relayDone
	produced := relay.Produced()
	if _, err := reb.Swap(ctx, rebuild.SwapOptions{Old: "old", Verify: true, Timeout: 30 * time.Second}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	var carried int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM heed.heed_outbox_relay`).Scan(&carried); err != nil || carried == 0 {
		t.Errorf("the swap carried %d relay positions over (%v), want the live ones", carried, err)
	}
	after := outbox.New(pool, pub, outbox.Config{Topic: s.topic})
	if err := after.Pass(ctx); err != nil {
		t.Fatal(err)
	}
	if after.Produced() != 0 || s.ends(t) != ends {
		t.Errorf("after the swap the relay produced %d (the live one %d), the topic holds %d: want nothing sent again", after.Produced(), produced, s.ends(t))
	}
}

// The relay moves with the partitions: a second member joins while the
// first one's relay publishes, takes partitions over and relays them with
// its own; every follow-up is applied once, and no row stays unsent.
func TestOutboxRelayMovesWithPartitions(t *testing.T) {
	s := newStackPartitions(t, 4)
	pub := s.publisher(t)
	member := func() (*running, *outbox.Relay) {
		var relay *outbox.Relay
		r := s.startConfig(t, batchEmitter{batchCounter{new(counter)}, ""}, applier.Config{OnEmit: func(p int32) { relay.Wake(p) }})
		relay = outbox.New(s.pool, pub, outbox.Config{Topic: s.topic, Partitions: r.Partitions, Poll: 50 * time.Millisecond, Batch: 5})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { relay.Run(ctx); close(done) }() //nolint:errcheck // Run returns nil when ctx ends
		t.Cleanup(func() { cancel(); <-done })
		return r, relay
	}
	const n = 200
	produce := func(from, to int) {
		recs := make([]*kgo.Record, 0, to-from)
		for i := from; i < to; i++ {
			recs = append(recs, record(t, fmt.Sprint("a-", i), fmt.Sprint("r", i), 1))
		}
		s.produce(t, recs...)
	}
	_, first := member()
	produce(0, n/2)
	waitFor(t, func() string {
		if first.Produced() == 0 {
			return "the first relay produced nothing yet"
		}
		return ""
	})
	second, secondRelay := member() // a rebalance while the first relays
	waitFor(t, func() string {
		if len(second.Partitions()) == 0 {
			return "the second member got no partition"
		}
		return ""
	})
	produce(n/2, n)
	waitFor(t, func() string {
		if got := s.value(t, `SELECT count(*) FROM counters WHERE key LIKE 'b-%'`); got != n {
			return fmt.Sprintf("%d follow-ups applied, want %d", got, n)
		}
		return ""
	})
	if got := s.value(t, `SELECT count(*) FROM counters WHERE key LIKE 'b-%' AND n <> 1`); got != 0 {
		t.Errorf("%d follow-ups applied more than once", got)
	}
	if got := s.value(t, `SELECT count(*) FROM processed_events`); got != 2*n {
		t.Errorf("%d processed events, want %d", got, 2*n)
	}
	if secondRelay.Produced() == 0 {
		t.Errorf("the second member's relay produced nothing for the partitions it took over")
	}
	waitFor(t, func() string {
		if first.Backlog().Unsent != 0 || secondRelay.Backlog().Unsent != 0 {
			return "rows left unsent"
		}
		return ""
	})
	t.Logf("first relay produced %d, second %d, %d records in the topic for %d commands and %d follow-ups",
		first.Produced(), secondRelay.Produced(), s.ends(t), n, n)
}

// faultyProducer fails the records of key permanently (too large for the
// broker) and, while transient is set, every record with a retriable error;
// it produces the others through next.
type faultyProducer struct {
	next      outbox.Producer
	key       string
	transient bool
}

func (f *faultyProducer) ProduceRecords(ctx context.Context, recs []*kgo.Record) []error {
	errs := make([]error, len(recs))
	var pass []*kgo.Record
	var idx []int
	for i, r := range recs {
		switch {
		case f.transient:
			errs[i] = fmt.Errorf("produce: %w", kerr.NotLeaderForPartition)
		case string(r.Key) == f.key:
			errs[i] = fmt.Errorf("produce: %w", kerr.MessageTooLarge)
		default:
			pass = append(pass, r)
			idx = append(idx, i)
		}
	}
	if len(pass) > 0 {
		for k, err := range f.next.ProduceRecords(ctx, pass) {
			errs[idx[k]] = err
		}
	}
	return errs
}

// A row the broker refuses for good is recorded and passed, and the relay
// goes on with the others; a transient failure moves nothing, and the next
// pass sends the rows.
func TestOutboxRelayFailures(t *testing.T) {
	s := newStack(t)
	r := s.startConfig(t, batchEmitter{batchCounter{new(counter)}, ""}, applier.Config{})
	s.produce(t, record(t, "a-1", "r1", 1), record(t, "a-2", "r2", 2), record(t, "a-3", "r3", 3))
	waitFor(t, func() string {
		if s.value(t, `SELECT count(*) FROM outbox`) != 3 {
			return "outbox rows missing"
		}
		return ""
	})
	r.stop(t, 30*time.Second) // nothing applies the follow-ups meanwhile
	prod := &faultyProducer{next: s.publisher(t), key: "b-a-2", transient: true}
	relay := outbox.New(s.pool, prod, outbox.Config{Topic: s.topic})
	if err := relay.Pass(t.Context()); err == nil {
		t.Fatal("a pass whose every produce failed reported no error")
	}
	if n := s.value(t, `SELECT coalesce(max(next_offset), 0) FROM heed_outbox_relay`); n != 0 || relay.Produced() != 0 || relay.Backlog().Unsent != 3 {
		t.Fatalf("after a transient failure: position %d, produced %d, unsent %d; want 0, 0, 3", n, relay.Produced(), relay.Backlog().Unsent)
	}
	prod.transient = false
	if err := relay.Pass(t.Context()); err != nil {
		t.Fatal(err)
	}
	if relay.Produced() != 2 || relay.Failures() != 1 || relay.Backlog().Unsent != 0 {
		t.Errorf("produced %d, failed %d, unsent %d; want 2, 1, 0", relay.Produced(), relay.Failures(), relay.Backlog().Unsent)
	}
	if n := s.value(t, `SELECT count(*) FROM heed_outbox_failed WHERE origin_offset = 1 AND reason LIKE '%MESSAGE_TOO_LARGE%'`); n != 1 {
		t.Errorf("heed_outbox_failed holds %d rows for the refused follow-up, want 1 with the broker's reason", n)
	}
	if n := s.value(t, `SELECT max(next_offset) FROM heed_outbox_relay`); n != 3 {
		t.Errorf("relay position %d, want 3: past the refused row", n)
	}
	if n := s.ends(t); n != 5 {
		t.Errorf("topic holds %d records, want 5 (3 commands, 2 follow-ups)", n)
	}
}

// A follow-up's request ID is told from a client's, whatever the key.
func TestIsFollowUpRequestID(t *testing.T) {
	id := uuid.MustParse("0193a8f2-0000-7000-8000-000000000001")
	for _, key := range []string{"", "alice", strings.Repeat("k", 5000)} {
		if rid := applier.FollowUpRequestID(id, key, "credit"); !applier.IsFollowUpRequestID(rid) {
			t.Errorf("IsFollowUpRequestID(%q) = false for a follow-up's", rid)
		}
	}
	if a, b := applier.FollowUpRequestID(id, "alice", "credit"), applier.FollowUpRequestID(id, "bob", "credit"); a == b {
		t.Errorf("two origin keys give one follow-up request ID %s", a)
	}
	for _, rid := range []string{"d1", "deposit/1", id.String(), id.String() + "/credit", id.String() + "/short/credit", "x/aaaaaaaaaaaaaaaa/credit"} {
		if applier.IsFollowUpRequestID(rid) {
			t.Errorf("IsFollowUpRequestID(%q) = true for a client's", rid)
		}
	}
}
