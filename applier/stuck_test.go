package applier_test

import (
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
)

// A partition whose batch cannot commit (its compare-and-set waits on a lock)
// stalls only itself: with many more records queued for it than a batch
// holds, the poll loop keeps feeding the other partition, whose records all
// apply. Then both partitions are stuck and a second member joins: the
// rebalance completes, whichever partition moves has its stuck batch rolled
// back within the grace. Once the locks are gone every record applies exactly
// once.
func TestStuckPartitionStallsOnlyItself(t *testing.T) {
	s := newStackPartitions(t, 2)
	c := new(counter)
	produce := s.partitionProducer(t)
	lock := s.lockPosition(t, 0)
	const n = 60
	for i := range n {
		produce(0, "a", fmt.Sprint("a", i))
		produce(1, "b", fmt.Sprint("b", i))
	}
	// Small batches by bytes: the stuck partition's queue fills and pauses it.
	cfg := applier.Config{MaxBatchRecords: 5, MaxBatchBytes: 512, Concurrency: 2, ShutdownGrace: 300 * time.Millisecond}
	first := s.startConfig(t, batchCounter{c}, cfg)
	s.waitCompareAndSets(t, "partition 0's compare-and-set", lock)
	testenv.Eventually(t, 30*time.Second, func() string {
		if got := s.counters(t); got["b"] != n || got["a"] != 0 {
			return fmt.Sprintf("counters %v while partition 0 is stuck, want b=%d, a=0", got, n)
		}
		return ""
	})

	lock1 := s.lockPositionAt(t, 1, n)
	produce(1, "b", "b-stuck")
	s.waitCompareAndSets(t, "both partitions' compare-and-set", lock, lock1)
	second := s.startConfig(t, batchCounter{c}, cfg)
	adm := kadm.NewClient(s.cl)
	testenv.Eventually(t, 30*time.Second, func() string {
		groups, err := adm.DescribeGroups(t.Context(), "counters")
		if err != nil {
			return fmt.Sprintf("describe group: %v", err)
		}
		g := groups["counters"]
		var owned []int32
		for _, m := range g.Members {
			if ca, ok := m.Assigned.AsConsumer(); ok {
				for _, tp := range ca.Topics {
					owned = append(owned, tp.Partitions...)
				}
			}
		}
		slices.Sort(owned)
		if g.State != "Stable" || len(g.Members) != 2 || !slices.Equal(owned, []int32{0, 1}) {
			return fmt.Sprintf("group %s with %d members owning %v, want Stable, 2 members owning [0 1]", g.State, len(g.Members), owned)
		}
		return ""
	})
	for i := range 5 {
		produce(1, "b", fmt.Sprint("b-late", i))
	}
	for _, l := range []pgx.Tx{lock, lock1} {
		if err := l.Rollback(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": n, "b": n + 6}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		return ""
	})
	if got := s.value(t, `SELECT count(*) FROM processed_events`); got != 2*n+6 {
		t.Errorf("processed_events has %d rows, want %d", got, 2*n+6)
	}
	t.Logf("first member %+v, second %+v", first.Stats(), second.Stats())
	s.checkNoOpenTransaction(t)
}

// A batch whose transaction does not answer (here: waiting on a lock) gives
// up after BatchTimeout, so that it frees its slot: with one slot, the other
// partition's records still apply.
func TestBatchTimeoutFreesSlot(t *testing.T) {
	s := newStackPartitions(t, 2)
	c := new(counter)
	produce := s.partitionProducer(t)
	lock := s.lockPosition(t, 0)
	produce(0, "a", "a1")
	app := s.startConfig(t, batchCounter{c}, applier.Config{Concurrency: 1, BatchTimeout: 300 * time.Millisecond})
	s.waitCompareAndSets(t, "partition 0's compare-and-set", lock)
	for i := range 5 {
		produce(1, "b", fmt.Sprint("b", i))
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if got := s.counters(t); got["b"] != 5 {
			return fmt.Sprintf("counters %v while partition 0's batch waits, want b=5", got)
		}
		return ""
	})
	if err := lock.Rollback(t.Context()); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": 1, "b": 5}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		return ""
	})
	if st := app.Stats(); st.Retries == 0 {
		t.Errorf("stats %+v, want partition 0's batch retried after timing out", st)
	}
	s.checkNoOpenTransaction(t)
}
