package applier

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
)

// The watchdog notices an owned partition that has records waiting in the
// topic (its end offset is above the applied position) and whose applied
// position has not moved for Config.StallTimeout: a stalled partition. It
// counts it (Stalled, for metrics and readiness) and, when the partition's
// worker holds nothing (no queued record, no batch in flight, so nothing
// was fetched for it), recovers its fetching from the poll loop: first by
// resuming and re-seeking the partition's fetch and asking the group
// coordinator for the assignment again; if the partition still does not
// move within another StallTimeout, by leaving the group and joining it again
// as a new member (a new Kafka client).
//
// Why: after broker restarts, half the partitions of a KIP-848 group stayed
// assigned and unapplied for minutes (issue 26, hole 7). That cause was a
// transaction slot lost by each stale batch (fixed in run, partition.go),
// but whatever a client, a coordinator or heed gets wrong next, an assigned
// partition that does not move with records waiting is visible from here:
// counted always, and recovered when nothing was fetched for it.

// watchInterval is how often the watchdog samples end offsets and applied
// positions.
const watchInterval = time.Second

// Stall is an owned partition with records waiting whose applied position
// has not moved for Since.
type Stall struct {
	Partition int32
	// Applied is the applied position (the next offset to apply), End the
	// topic's end offset: End-Applied records wait.
	Applied, End int64
	// Since is how long the position has not moved.
	Since time.Duration
}

func (s Stall) String() string {
	return fmt.Sprintf("partition %d at %d of %d, not moved for %v", s.Partition, s.Applied, s.End, s.Since.Round(time.Second))
}

// watchdog holds what the watchdog saw of each owned partition.
type watchdog struct {
	a *Applier

	mu      sync.Mutex
	seen    map[*partition]*progress
	stalled []Stall
	// kick holds the partitions the poll loop must recover, and rejoin
	// whether it must rejoin the group to do so.
	kick   []int32
	rejoin bool
	// resumeless, set by tests, makes recoverStalls leave the fetch as it
	// is: only a rejoin recovers.
	resumeless atomic.Bool
}

// progress is one worker's last seen applied position, since when, and how
// many recoveries were tried since it last moved.
type progress struct {
	applied int64
	movedAt time.Time
	kicked  int
	kickAt  time.Time
}

func newWatchdog(a *Applier) *watchdog {
	return &watchdog{a: a, seen: make(map[*partition]*progress)}
}

// run samples every watchInterval until ctx ends.
func (d *watchdog) run(ctx context.Context) {
	t := time.NewTicker(watchInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		d.sample(ctx)
	}
}

// sample reads the topic's end offsets and the applied positions and updates
// what it knows of every owned partition. A sample that cannot be read (the
// broker or the database is down) changes nothing.
func (d *watchdog) sample(ctx context.Context) {
	a := d.a
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	ends, err := consistency.ListEndOffsets(cctx, a.client(), a.cfg.Topic)
	if err != nil {
		return
	}
	applied, err := AppliedPositions(cctx, a.pool, a.cfg.Topic)
	if err != nil {
		return
	}
	a.mu.Lock()
	owned := maps.Clone(a.parts)
	a.mu.Unlock()
	d.observe(time.Now(), owned, applied, ends)
}

// observe updates the watchdog with one sample taken at now.
func (d *watchdog) observe(now time.Time, owned map[int32]*partition, applied, ends map[int32]int64) {
	a := d.a
	timeout := a.cfg.StallTimeout
	d.mu.Lock()
	defer d.mu.Unlock()
	for w := range d.seen {
		if owned[w.p] != w {
			delete(d.seen, w)
		}
	}
	var stalled []Stall
	for _, p := range slices.Sorted(maps.Keys(owned)) {
		w := owned[p]
		pos, ok := applied[p]
		end, known := ends[p]
		pr := d.seen[w]
		if pr == nil {
			pr = &progress{applied: pos, movedAt: now}
			d.seen[w] = pr
		}
		if !ok || !known || pos >= end || pos != pr.applied {
			pr.applied, pr.movedAt, pr.kicked = pos, now, 0
			continue
		}
		since := now.Sub(pr.movedAt)
		if since < timeout {
			continue
		}
		stalled = append(stalled, Stall{Partition: p, Applied: pos, End: end, Since: since})
		if !w.holdsNothing(pos) || now.Sub(pr.kickAt) < timeout {
			continue // its worker is busy (a slow or failing batch: not a fetch problem), or was just kicked
		}
		pr.kicked++
		pr.kickAt = now
		d.kick = append(d.kick, p)
		if pr.kicked > 1 {
			d.rejoin = true
		}
	}
	d.stalled = stalled
}

// takeKicks returns the partitions to recover, and whether to rejoin the
// group, and forgets them.
func (d *watchdog) takeKicks() ([]int32, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ps, rejoin := d.kick, d.rejoin
	d.kick, d.rejoin = nil, false
	return ps, rejoin
}

// Stalled returns the owned partitions that have records waiting and whose
// applied position has not moved for Config.StallTimeout, as of the last
// sample (at most a second old). Safe for concurrent use.
func (a *Applier) Stalled() []Stall {
	a.dog.mu.Lock()
	defer a.dog.mu.Unlock()
	return slices.Clone(a.dog.stalled)
}

// holdsNothing reports whether the worker has no record queued and none in
// flight: everything it was fed is applied (applied is the position read
// from the database).
func (w *partition) holdsNothing(applied int64) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue) == 0 && w.fed <= applied
}

// recoverStalls recovers the fetching of stalled partitions ps: it resumes
// and re-seeks each to what its worker needs next and, in a KIP-848 group,
// asks the coordinator for the assignment again. Run calls it from the poll
// loop, while the client holds rebalances back.
func (a *Applier) recoverStalls(ps []int32) {
	a.mu.Lock()
	seek := map[int32]kgo.EpochOffset{}
	for _, p := range ps {
		w := a.parts[p]
		if w == nil {
			continue
		}
		w.mu.Lock()
		w.paused = false
		seek[p] = kgo.EpochOffset{Epoch: -1, Offset: w.fed}
		w.mu.Unlock()
	}
	a.mu.Unlock()
	if len(seek) == 0 {
		return
	}
	ids := slices.Sorted(maps.Keys(seek))
	a.log.Warn("partitions with records waiting did not move and their workers got nothing to apply; resuming and re-seeking their fetch",
		"topic", a.cfg.Topic, "partitions", ids, "stall_timeout", a.cfg.StallTimeout)
	a.stats.stallRecoveries.Add(int64(len(ids)))
	if a.dog.resumeless.Load() {
		return
	}
	a.cl.ResumeFetchPartitions(map[string][]int32{a.cfg.Topic: ids})
	a.cl.SetOffsets(map[string]map[int32]kgo.EpochOffset{a.cfg.Topic: seek})
	if a.cfg.ServerSideGroup {
		a.cl.ForceRebalance() // KIP-848: a full heartbeat, which re-sends the assignment
	}
}
