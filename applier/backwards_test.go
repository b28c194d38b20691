package applier_test

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// A partition's applied position that moves backwards under a running applier
// (the database restored from an older backup, a hand-made UPDATE) cannot be
// served from the records the worker holds: the worker stops the partition
// instead of applying past the gap, and the next owner resumes from the
// database's position, reading the topic again (duplicates) and then the new
// records.
func TestPositionMovedBackwardsStopsPartition(t *testing.T) {
	s := newStack(t)
	c := new(counter)
	s.produce(t, record(t, "a", "a1", 1), record(t, "a", "a2", 2))
	app := s.start(t, batchCounter{c}, 0)
	testenv.Eventually(t, 20*time.Second, func() string {
		if p := s.position(t); p != 2 {
			return fmt.Sprintf("position %d, want 2", p)
		}
		return ""
	})
	if _, err := s.pool.Exec(t.Context(), `UPDATE applied_positions SET next_offset = 0 WHERE topic = $1`, s.topic); err != nil {
		t.Fatal(err)
	}
	s.produce(t, record(t, "a", "a3", 4))
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Stale < 1 {
			return fmt.Sprintf("stats %+v, want the batch after the rewind found stale", st)
		}
		return ""
	})
	time.Sleep(time.Second) // a worker that went on would apply a3 by now
	if got, want := s.counters(t), map[string]int64{"a": 3}; !maps.Equal(got, want) {
		t.Fatalf("counters = %v, want %v: nothing applied after the position moved backwards", got, want)
	}
	if p := s.position(t); p != 0 {
		t.Fatalf("position %d after the rewind, want it left at 0", p)
	}
	app.stop(t, 30*time.Second)

	next := s.start(t, batchCounter{c}, 0)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := next.Stats(); st.Duplicates != 2 || st.Applied != 1 {
			return fmt.Sprintf("stats %+v, want a1 and a2 read again as duplicates and a3 applied", st)
		}
		return ""
	})
	s.checkState(t, state{counters: map[string]int64{"a": 7}, processed: 3, position: 3})
}
