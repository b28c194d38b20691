package applier_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
)

// A partition whose fetching stopped behind its worker's back (paused in the
// Kafka client and never resumed, as a broker restart left half the
// partitions of a KIP-848 group in issue 26) is noticed as stalled once it
// has records waiting and has not moved for the stall timeout, and its fetch
// is recovered: every record applies once. With the resume and re-seek made
// ineffective, the member rejoins the group instead.
func TestStalledPartitionRecovers(t *testing.T) {
	for _, tc := range []struct {
		name               string
		resumeless, kip848 bool
	}{
		{"resume", false, false},
		{"rejoin", true, false},
		{"resume-kip848", false, true},
		{"rejoin-kip848", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStackPartitions(t, 2)
			c := new(counter)
			produce := s.partitionProducer(t)
			cfg := applier.Config{StallTimeout: time.Second, ShutdownGrace: time.Second, ServerSideGroup: tc.kip848}
			r := s.startConfig(t, batchCounter{c}, cfg)
			if tc.resumeless {
				applier.ResumelessRecovery(r.Applier)
			}
			produce(0, "a", "a-first")
			produce(1, "b", "b-first")
			waitCounters(t, s, map[string]int64{"a": 1, "b": 1})

			applier.BreakFetch(r.Applier, 0)
			const n = 20
			for i := range n {
				produce(0, "a", fmt.Sprint("a", i))
				produce(1, "b", fmt.Sprint("b", i))
			}
			sawStall := false
			testenv.Eventually(t, 30*time.Second, func() string {
				for _, st := range r.Stalled() {
					sawStall = sawStall || st.Partition == 0
				}
				got := s.counters(t)
				if got["a"] != n+1 || got["b"] != n+1 {
					return fmt.Sprintf("counters %v, want a=%d and b=%d (stats %+v)", got, n+1, n+1, r.Stats())
				}
				return ""
			})
			st := r.Stats()
			switch {
			case st.StallRecoveries == 0:
				t.Errorf("stats %+v: no stall recovery, want partition 0's fetch recovered", st)
			case tc.resumeless && st.Rejoins == 0:
				t.Errorf("stats %+v: no rejoin, want the member to rejoin when resuming did not help", st)
			case !tc.resumeless && st.Rejoins != 0:
				t.Errorf("stats %+v: rejoined, want resuming the fetch to be enough", st)
			}
			if !sawStall {
				t.Errorf("Stalled never named partition 0 while it did not move")
			}
			if got := s.value(t, `SELECT count(*) FROM processed_events`); got != 2*(n+1) {
				t.Errorf("%d events processed, want %d (each once)", got, 2*(n+1))
			}
		})
	}
}

// waitCounters waits until the counters are want.
func waitCounters(t *testing.T, s *stack, want map[string]int64) {
	t.Helper()
	testenv.Eventually(t, 30*time.Second, func() string {
		got := s.counters(t)
		for k, v := range want {
			if got[k] != v {
				return fmt.Sprintf("counters %v, want %v", got, want)
			}
		}
		return ""
	})
}
