package applier_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
)

// A worker whose batches are found applied by another member (its position
// moved ahead while its batch waited: both members of a group applied the
// partition for a moment, as after a broker restart in issue 26) goes on
// from the new position, batch after batch, and keeps its transaction
// slots: with one slot, one lost slot would stop every partition of the
// member for good.
func TestPositionMovedAheadKeepsSlots(t *testing.T) {
	s := newStackPartitions(t, 2)
	c := new(counter)
	produce := s.partitionProducer(t)
	const n = 20
	for i := range n {
		produce(0, "a", fmt.Sprint("a", i))
	}
	lock := s.lockPosition(t, 0)
	cfg := applier.Config{Concurrency: 1, MaxBatchRecords: 1, ShutdownGrace: time.Second}
	s.startConfig(t, batchCounter{c}, cfg)
	s.waitCompareAndSets(t, "partition 0's first batch", lock)
	// Another member applied partition 0 up to 10 meanwhile.
	if _, err := lock.Exec(t.Context(), `UPDATE applied_positions SET next_offset = 10 WHERE topic = $1 AND partition = 0`, s.topic); err != nil {
		t.Fatal(err)
	}
	if err := lock.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	produce(1, "b", "b0")
	testenv.Eventually(t, 30*time.Second, func() string {
		got := s.counters(t)
		if pos := s.position(t); pos != n || got["a"] != n-10 || got["b"] != 1 {
			return fmt.Sprintf("partition 0 at %d of %d, counters %v: want a=%d (the records from 10 on) and b=1", pos, n, got, n-10)
		}
		return ""
	})
}
