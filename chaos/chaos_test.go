// Package chaos drives built heed binaries (two serve, three apply, built
// with failpoints) against a private Postgres and the embedded broker,
// through many faults at once on a seeded schedule, and checks every
// acknowledged command afterwards. TestChaos runs a short run in go test
// ./...; HEED_CHAOS_LONG=1 makes it a long one, HEED_CHAOS_SEED replays one,
// HEED_CHAOS_DURATION sets its length, HEED_CHAOS_DYNAMIC=1 runs the
// appliers as dynamic group members, HEED_CHAOS_LOGDIR keeps the logs.
//
// A run is made of small pieces: faults (faults_test.go), the load
// (load_test.go) and checks (checks_test.go); later work adds its own.
package chaos

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestChaos runs the load through faults drawn from faults on a seeded
// schedule, then brings everything back and checks the invariants. A failure
// prints the seed and the schedule.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds heed and runs it as processes for a minute")
	}
	seed := chaosSeed(t)
	duration, gap := 30*time.Second, 1500*time.Millisecond
	if os.Getenv("HEED_CHAOS_LONG") != "" {
		duration, gap = 10*time.Minute, time.Second
	}
	if v := os.Getenv("HEED_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			t.Fatalf("HEED_CHAOS_DURATION=%q: want a positive Go duration", v)
		}
		duration = d
	}
	log := newSchedule(seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("chaos schedule:\n%s", log)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0))
	s := newStack(t, 2, 3, log)
	waitServing(t, s)

	const accounts = 20
	l := startLoad([]string{s.serves[0].addr, s.serves[1].addr}, 6, accounts, seed)
	defer l.stop()

	ctx := t.Context()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	stalls := watchPartitions(watchCtx, s, log.start)
	end := time.Now().Add(duration)
	var lastFault time.Time
	for time.Now().Before(end) {
		time.Sleep(gap/2 + time.Duration(rng.Int64N(int64(gap))))
		f := faults[rng.IntN(len(faults))]
		what, err := f.inject(ctx, s, rng)
		if err != nil {
			t.Errorf("fault %s: %v", f.name, err)
			continue
		}
		lastFault = time.Now()
		log.add(f.name, what)
		if logDir != "" {
			_ = os.WriteFile(filepath.Join(logDir, "schedule.txt"), []byte(log.String()), 0o644)
		}
		// What a fault stopped comes back after a while, as a supervisor
		// would bring it back.
		time.Sleep(time.Duration(rng.IntN(1000)) * time.Millisecond)
		if n := s.revive(); n > 0 {
			log.add("revive", strconv.Itoa(n)+" processes started again")
		}
	}
	// Everything healthy again; the load goes on a little, then stops.
	s.clearFailpoints()
	s.revive()
	time.Sleep(2 * time.Second)
	acked, retries := stopReviving(s, l)
	checkDrained(t, s, l)
	recovery, records := checkConverged(t, s, lastFault)
	stopWatch()
	processed := checkExactlyOnce(t, s, acked)
	faultCount := 0
	for kind, n := range log.counts {
		if kind != "revive" && kind != "clear-failpoint" && !strings.HasPrefix(kind, "armed at ") && !strings.HasPrefix(kind, "crashed at ") {
			faultCount += n
		}
	}
	t.Logf("seed %d, %v: %d commands acknowledged (%d sends retried), %d records in the topic (%d duplicates suppressed), through %d faults %v; converged %v after the last fault; %s",
		seed, duration, len(acked), retries, records, records-processed, faultCount, log.counts, recovery.Round(100*time.Millisecond), stalls)
}

// chaosSeed is HEED_CHAOS_SEED, or a new seed.
func chaosSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("HEED_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("HEED_CHAOS_SEED=%q: want a number", v)
		}
	}
	return seed
}
