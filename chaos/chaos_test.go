// Package chaos drives built binaries of a domain (two serve, three apply,
// built with failpoints) against a private Postgres and the embedded broker,
// through many faults at once on a seeded schedule, and checks every
// acknowledged command afterwards. It runs against each target: the
// reference ledger (cmd/heed) and the booking example
// (examples/booking/cmd/booking), a second domain on heed's public API.
// TestChaos runs a short run of each in go test ./...; HEED_CHAOS_LONG=1
// makes them long ones, HEED_CHAOS_SEED replays one, HEED_CHAOS_DURATION
// sets their length, HEED_CHAOS_DYNAMIC=1 runs the appliers as dynamic group
// members, HEED_CHAOS_LOGDIR keeps the logs; go test -run TestChaos/booking
// runs one target.
//
// A run is made of small pieces: faults (faults_test.go), the load
// (load_test.go), the checks (checks_test.go) and the targets
// (target_test.go, ledger_test.go, booking_test.go); later work adds its
// own.
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

// TestChaos runs, for each target, the load through faults drawn from
// faults (and the target's own) on a seeded schedule, one of them a rebuild
// --verify --swap in the second half if the draws brought none before, and
// each of the target's own at least once, with the target's check during
// the run beside it; then it brings everything back and checks the
// invariants: every partition applied to the topic's end, no unsent
// follow-up, each acknowledged command applied or rejected once, the
// target's model of the projection, the projection equal to a rebuild of
// the topic, and, last, that a recreated topic is refused. A failure prints
// the seed and the schedule.
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binaries and runs them as processes for a minute each")
	}
	seed := chaosSeed(t)
	for _, tg := range targets {
		t.Run(tg.name, func(t *testing.T) { runChaos(t, tg, seed) })
	}
}

// runChaos is TestChaos for one target.
func runChaos(t *testing.T, tg *target, seed uint64) {
	duration, gap := tg.short, 1500*time.Millisecond
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
			t.Logf("chaos schedule (%s):\n%s", tg.name, log)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0))
	s := newStack(t, tg, 2, 3, log)
	waitServing(t, s)

	l := startLoad(tg, []string{s.serves[0].addr, s.serves[1].addr}, 6, seed)
	defer l.stop()
	stopDuring := func() string { return "" }
	if tg.during != nil {
		stopDuring = tg.during(t.Context(), t, s, l, seed)
	}
	defer stopDuring()

	ctx := t.Context()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	stalls := watchPartitions(watchCtx, s, log.start)
	start := time.Now()
	end, half := start.Add(duration), start.Add(duration/2)
	swapped := false
	var lastFault time.Time
	for time.Now().Before(end) {
		time.Sleep(gap/2 + time.Duration(rng.Int64N(int64(gap))))
		f := faults[rng.IntN(len(faults))]
		if len(tg.faults) > 0 && rng.IntN(3) == 0 {
			f = tg.faults[rng.IntN(len(tg.faults))]
		}
		var missing []fault // the target's own faults not come yet: the first draws
		for _, own := range tg.faults {
			if !log.has(own.name) {
				missing = append(missing, own)
			}
		}
		switch {
		case !swapped && time.Now().After(half):
			f = faultsNamed("rebuild-swap")[0] // every run swaps under the load at least once
		case len(missing) > 0:
			f = missing[rng.IntN(len(missing))] // and has each of the target's own faults
		}
		swapped = swapped || f.name == "rebuild-swap"
		what, err := f.inject(ctx, s, rng)
		if err != nil {
			t.Errorf("fault %s: %v", f.name, err)
			continue
		}
		lastFault = time.Now()
		log.add(f.name, what)
		if logDir != "" {
			_ = os.WriteFile(filepath.Join(logDir, tg.name+"-schedule.txt"), []byte(log.String()), 0o644)
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
	recovery, _ := checkConverged(t, s, lastFault)
	outboxRows, records := checkQuiet(t, s)
	stopWatch()
	during := stopDuring()
	processed, summary := checkCommands(t, s, acked)
	checkRebuild(t, s)
	checkTopicGuard(t, s)
	faultCount := 0
	for kind, n := range log.counts {
		if kind != "revive" && kind != "clear-failpoint" && kind != "recreate-topic" && kind != "relay-back" && kind != "relay-revoke-leave" && !strings.HasPrefix(kind, "armed at ") && !strings.HasPrefix(kind, "crashed at ") {
			faultCount += n
		}
	}
	t.Logf("%s, seed %d, %v: %d commands acknowledged (%d sends retried), %d records in the topic (%d duplicates suppressed; %d follow-ups emitted), through %d faults %v; converged %v after the last fault; %s; %s%s",
		tg.name, seed, duration, len(acked), retries, records, records-processed, outboxRows, faultCount, log.counts, recovery.Round(100*time.Millisecond), stalls, summary, during)
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
