package topic_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

const name = "events"

// fixture is a migrated database and a broker with a 2-partition topic.
type fixture struct {
	pool *pgxpool.Pool
	cl   *kgo.Client
	adm  *kadm.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pool, err := schema.Connect(t.Context(), testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(t.Context(), pool, schema.Default, ledger.Schema, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	b := testenv.Broker(t, 2)
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.DefaultProduceTopic(name), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	f := &fixture{pool: pool, cl: cl, adm: kadm.NewClient(cl)}
	f.create(t)
	return f
}

func (f *fixture) create(t *testing.T) {
	t.Helper()
	if _, err := f.adm.CreateTopic(t.Context(), 2, 1, nil, name); err != nil {
		t.Fatal(err)
	}
}

// produce writes one record to partition p.
func (f *fixture) produce(t *testing.T, p int32) {
	t.Helper()
	if err := f.cl.ProduceSync(t.Context(), &kgo.Record{Partition: p, Key: []byte("k"), Value: []byte("v")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// setPosition sets partition p's applied position.
func (f *fixture) setPosition(t *testing.T, p int32, next int64) {
	t.Helper()
	if _, err := f.pool.Exec(t.Context(), `INSERT INTO applied_positions (topic, partition, next_offset) VALUES ($1, $2, $3)
ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset`, name, p, next); err != nil {
		t.Fatal(err)
	}
}

// The first Verify records the topic; later ones accept it and refuse a
// recreated topic (another ID), a lost one, a projection ahead of the topic
// and a grown partition count, each with what to do.
func TestVerify(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	first, err := topic.Verify(ctx, f.pool, f.cl, name)
	if err != nil || first.Partitions != 2 || first.ID == [16]byte{} {
		t.Fatalf("first Verify = %v, %v; want the topic recorded with its ID and 2 partitions", first, err)
	}
	if again, err := topic.Verify(ctx, f.pool, f.cl, name); err != nil || again != first {
		t.Fatalf("second Verify = %v, %v; want %v", again, err, first)
	}

	f.produce(t, 0)
	f.setPosition(t, 0, 5)
	if _, err := topic.Verify(ctx, f.pool, f.cl, name); !errors.Is(err, topic.ErrAheadOfTopic) || !strings.Contains(err.Error(), "partition 0") {
		t.Errorf("Verify with partition 0 applied to 5 of 1 = %v, want ErrAheadOfTopic naming partition 0", err)
	}
	f.setPosition(t, 0, 1)

	if _, err := f.adm.CreatePartitions(ctx, 1, name); err != nil {
		t.Fatal(err)
	}
	rec, err := topic.Verify(ctx, f.pool, f.cl, name)
	if !errors.Is(err, topic.ErrPartitionsChanged) || rec.Partitions != 2 || !strings.Contains(err.Error(), "heed topic confirm-partitions") {
		t.Errorf("Verify after growing to 3 partitions = %v, %v; want ErrPartitionsChanged with the recorded 2 and the fix", rec, err)
	}

	if _, err := f.adm.DeleteTopics(ctx, name); err != nil {
		t.Fatal(err)
	}
	if _, err := topic.Verify(ctx, f.pool, f.cl, name); !errors.Is(err, topic.ErrOtherIncarnation) || !strings.Contains(err.Error(), "lost") {
		t.Errorf("Verify with the topic deleted = %v, want ErrOtherIncarnation saying the broker lost it", err)
	}
	f.create(t)
	if _, err := topic.Verify(ctx, f.pool, f.cl, name); !errors.Is(err, topic.ErrOtherIncarnation) || !strings.Contains(err.Error(), "Restore the broker's data") {
		t.Errorf("Verify with the topic recreated = %v, want ErrOtherIncarnation with the fix", err)
	}
}

// A projection applied from another topic before identities were recorded
// (its positions beyond this topic's end) is refused on first use instead of
// being bound to it.
func TestVerifyFirstUseAhead(t *testing.T) {
	f := newFixture(t)
	f.setPosition(t, 1, 7)
	if _, err := topic.Verify(t.Context(), f.pool, f.cl, name); !errors.Is(err, topic.ErrAheadOfTopic) {
		t.Fatalf("first Verify of a projection ahead of the topic = %v, want ErrAheadOfTopic", err)
	}
	if _, ok, err := topic.Recorded(t.Context(), f.pool, name); ok || err != nil {
		t.Errorf("Recorded after a refused first use = %v, %v; want nothing recorded", ok, err)
	}
}

// Bind reads the applied positions before the end offsets: a record written
// and applied while it reads the ends (here by the ends function itself, right
// after its read) is not taken for a record the broker lost. Reading the ends
// first, a position read after them lies past them and Bind refuses.
func TestBindReadsPositionsBeforeEnds(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	live, err := topic.Describe(ctx, f.cl, name)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.produce(t, 0)
	}
	f.setPosition(t, 0, 3)
	for i := range 5 {
		ends := func(ctx context.Context) (map[int32]int64, error) {
			ends, err := consistency.ListEndOffsets(ctx, f.cl, name)
			if err != nil {
				return nil, err
			}
			f.produce(t, 0) // written and applied once the ends are read
			f.setPosition(t, 0, ends[0]+1)
			return ends, nil
		}
		if _, err := topic.Bind(ctx, f.pool, live, ends); err != nil {
			t.Fatalf("Bind %d with a record applied while the ends were read: %v", i, err)
		}
	}
	// A real loss is still refused: the position past the end.
	f.setPosition(t, 0, 100)
	ends := func(ctx context.Context) (map[int32]int64, error) { return consistency.ListEndOffsets(ctx, f.cl, name) }
	if _, err := topic.Bind(ctx, f.pool, live, ends); !errors.Is(err, topic.ErrAheadOfTopic) {
		t.Errorf("Bind with partition 0 applied to 100, past its end = %v, want ErrAheadOfTopic", err)
	}
}

// A Guard admits commands while the topic matches, and refuses them, saying
// why, once it does not; Partitions stays the recorded count.
func TestGuard(t *testing.T) {
	f := newFixture(t)
	g := topic.NewGuard(f.pool, f.cl, name, 0, testenv.Logger(t))
	if err := g.Admit(); err == nil {
		t.Error("a Guard admits commands before its first check")
	}
	if err := g.Check(t.Context()); err != nil || g.Admit() != nil || g.Partitions() != 2 {
		t.Fatalf("Check = %v, Admit = %v, Partitions = %d; want a match over 2 partitions", err, g.Admit(), g.Partitions())
	}
	if _, err := f.adm.CreatePartitions(t.Context(), 2, name); err != nil {
		t.Fatal(err)
	}
	if err := g.Check(t.Context()); !errors.Is(err, topic.ErrPartitionsChanged) || !errors.Is(g.Admit(), topic.ErrPartitionsChanged) || g.Partitions() != 2 {
		t.Errorf("after growing to 4 partitions: Check = %v, Admit = %v, Partitions = %d; want refused, still hashing over 2", err, g.Admit(), g.Partitions())
	}
}

// A running Guard notices, by its periodic check and not only at start, a
// topic deleted and created again under the same name (what a wiped broker or
// an operator's mistake leaves), and refuses commands from then on.
func TestGuardNoticesRecreatedTopic(t *testing.T) {
	f := newFixture(t)
	g := topic.NewGuard(f.pool, f.cl, name, 50*time.Millisecond, testenv.Logger(t))
	if err := g.Check(t.Context()); err != nil || g.Admit() != nil {
		t.Fatalf("first Check = %v, Admit = %v; want a match", err, g.Admit())
	}
	ctx, cancel := context.WithCancel(t.Context())
	ran := make(chan struct{})
	go func() { defer close(ran); g.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran })

	first, _ := topic.Describe(t.Context(), f.cl, name)
	if _, err := f.adm.DeleteTopics(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	f.create(t)
	if again, err := topic.Describe(t.Context(), f.cl, name); err != nil || again.ID == first.ID {
		t.Fatalf("the recreated topic is %v, %v; want another topic ID than %s", again, err, first.ID)
	}
	testenv.Eventually(t, 10*time.Second, func() string {
		if err := g.Admit(); !errors.Is(err, topic.ErrOtherIncarnation) || !strings.Contains(err.Error(), "has topic ID") {
			return fmt.Sprintf("Admit = %v, want ErrOtherIncarnation naming the new topic ID", err)
		}
		return ""
	})
}

// ConfirmPartitions records a grown partition count only once the old
// partitions are applied to their end with nothing quarantined or parked,
// telling what it waits for meanwhile.
func TestConfirmPartitions(t *testing.T) {
	f := newFixture(t)
	ctx := t.Context()
	if _, err := topic.Verify(ctx, f.pool, f.cl, name); err != nil {
		t.Fatal(err)
	}
	f.produce(t, 0)
	f.produce(t, 1)
	if _, err := f.adm.CreatePartitions(ctx, 2, name); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pool.Exec(ctx, `INSERT INTO quarantine (topic, partition, "offset", kind, reason, key, value) VALUES ($1, 1, 0, 'poison', 'test', 'k', 'v')`, name); err != nil {
		t.Fatal(err)
	}

	short, cancel := context2s(t)
	defer cancel()
	var said []string
	_, err := topic.ConfirmPartitions(short, f.pool, f.cl, name, 100*time.Millisecond, func(s string) { said = append(said, s) })
	if !errors.Is(err, topic.ErrNotDrained) || len(said) == 0 || !strings.Contains(said[0], "2 events") {
		t.Fatalf("ConfirmPartitions with 2 events not applied = %v (said %q), want ErrNotDrained saying so", err, said)
	}
	f.setPosition(t, 0, 1)
	f.setPosition(t, 1, 1)
	short, cancel = context2s(t)
	defer cancel()
	said = nil
	_, err = topic.ConfirmPartitions(short, f.pool, f.cl, name, 100*time.Millisecond, func(s string) { said = append(said, s) })
	if !errors.Is(err, topic.ErrNotDrained) || len(said) == 0 || !strings.Contains(said[0], "quarantined or parked") {
		t.Fatalf("ConfirmPartitions with a record quarantined = %v (said %q), want ErrNotDrained saying so", err, said)
	}
	if _, err := f.pool.Exec(ctx, `UPDATE quarantine SET state = 'dropped'`); err != nil {
		t.Fatal(err)
	}
	rec, err := topic.ConfirmPartitions(ctx, f.pool, f.cl, name, 100*time.Millisecond, nil)
	if err != nil || rec.Partitions != 4 {
		t.Fatalf("ConfirmPartitions once drained = %v, %v; want 4 partitions recorded", rec, err)
	}
	if _, err := topic.Verify(ctx, f.pool, f.cl, name); err != nil {
		t.Errorf("Verify after the confirmation: %v", err)
	}
}

// context2s is the test's context bounded to 2 seconds.
func context2s(t *testing.T) (context.Context, context.CancelFunc) {
	return context.WithTimeout(t.Context(), 2*time.Second)
}
