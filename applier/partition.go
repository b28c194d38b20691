package applier

import (
	"context"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// partition is the worker that applies one assigned partition.
//
// The poll loop hands it records with feed, which never blocks: records queue
// up, and once a queue is full (two batches, see full) the poll loop pauses
// fetching that partition until the worker has taken half of it. A partition
// whose batch fails over and over therefore holds back only itself: the poll
// loop keeps feeding the others and rebalances are never kept waiting on it.
type partition struct {
	a *Applier
	p int32
	// ctx ends when the worker's in-flight transaction must roll back: the
	// grace after stop is over, or the applier is stopping hard.
	ctx    context.Context
	cancel context.CancelFunc
	quit   chan struct{}
	done   chan struct{}
	// wake holds a token when records were queued since the worker last looked.
	wake chan struct{}

	mu sync.Mutex
	// queue holds the records fed and not yet taken into a batch, in log
	// order, and their bytes.
	queue      []*kgo.Record
	queueBytes int
	// paused is set while the poll loop has paused fetching the partition.
	paused bool
	// fed: offsets below it were queued already. Only feed uses it.
	fed int64

	// The fields below belong to the worker goroutine.

	// next: the applied position in the database as this worker knows it.
	next int64
	// poison holds, by offset, records found to be poison while applying
	// (a Handler's EventError, or a failure in Postgres that only this record
	// causes), with the reason: the next attempt quarantines them.
	poison map[int64]string
	// suspect is the offset of a lone record whose batch failed with an
	// error an event can cause; failing again alone makes it poison.
	suspect int64
}

func startPartition(a *Applier, p int32, pos int64) *partition {
	ctx, cancel := context.WithCancel(a.hard)
	w := &partition{
		a:       a,
		p:       p,
		ctx:     ctx,
		cancel:  cancel,
		quit:    make(chan struct{}),
		done:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		fed:     pos,
		next:    pos,
		poison:  make(map[int64]string),
		suspect: -1,
	}
	go w.run()
	return w
}

// stop asks the worker to finish its in-flight batch and return; wait on
// done. After grace the in-flight batch is rolled back instead.
func (w *partition) stop(grace time.Duration) {
	select {
	case <-w.quit:
		return
	default:
		close(w.quit)
	}
	t := time.AfterFunc(grace, w.cancel)
	go func() {
		<-w.done
		t.Stop()
		w.cancel()
	}()
}

// feed queues fetched records, dropping those below what was queued before (a
// re-fetch after a pause or a seek). It never blocks: a full queue (see full)
// pauses fetching the partition until the worker has taken half of it.
func (w *partition) feed(recs []*kgo.Record) {
	w.mu.Lock()
	i := 0
	for i < len(recs) && recs[i].Offset < w.fed {
		i++
	}
	recs = recs[i:]
	if len(recs) == 0 {
		w.mu.Unlock()
		return
	}
	w.fed = recs[len(recs)-1].Offset + 1
	w.queue = append(w.queue, recs...)
	for _, r := range recs {
		w.queueBytes += len(r.Key) + len(r.Value)
	}
	if !w.paused && w.full() {
		w.paused = true
		w.a.cl.PauseFetchPartitions(map[string][]int32{w.a.cfg.Topic: {w.p}})
		w.a.log.Debug("partition queue full; fetching paused", "partition", w.p, "records", len(w.queue), "bytes", w.queueBytes)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// pauseRecords is the fewest queued records that pause a partition: with
// small batches, pausing at two of them would pause and resume for every
// batch, and a resumed partition may wait for the fetch in flight (up to the
// fetch's max wait) before it is fetched again.
const pauseRecords = 8192

// full reports whether the queue holds enough to pause fetching: two full
// batches (at least pauseRecords records), or two batches' bytes. w.mu must
// be held.
func (w *partition) full() bool {
	cfg := &w.a.cfg
	return len(w.queue) >= max(2*cfg.MaxBatchRecords, pauseRecords) || w.queueBytes >= 2*cfg.MaxBatchBytes
}

// resume lets the poll loop fetch the partition again if feed paused it;
// w.mu must be held.
func (w *partition) resume() {
	if w.paused {
		w.paused = false
		w.a.cl.ResumeFetchPartitions(map[string][]int32{w.a.cfg.Topic: {w.p}})
		w.a.log.Debug("fetching resumed", "partition", w.p)
	}
}

func (w *partition) run() {
	defer close(w.done)
	a := w.a
	held := false
	for {
		if !w.wait() {
			return
		}
		if !a.covers(w.ctx, w.p) {
			if !held {
				a.log.Error("holding the partition: the projection was built with fewer partitions; its records apply once an operator confirms the new count (heed topic confirm-partitions)",
					"partition", w.p, "covered", a.covered.Load())
				held = true
			}
			select {
			case <-time.After(recheckInterval):
				continue
			case <-w.quit:
				return
			}
		}
		held = false
		select {
		case a.slots <- struct{}{}:
		case <-w.quit:
			return
		}
		// Cut the batch only now: what arrived while this partition waited
		// for a slot (other partitions' transactions) joins it, instead of
		// waiting for a transaction of its own.
		if !w.applyBatch(w.take()) {
			return
		}
	}
}

// wait blocks until records are queued and then, with a Linger, until a full
// batch is queued or Linger has passed; false when the worker must stop.
func (w *partition) wait() bool {
	var linger <-chan time.Time
	for {
		w.mu.Lock()
		n, full := w.cut()
		w.mu.Unlock()
		if n > 0 {
			if full || w.a.cfg.Linger <= 0 {
				return true
			}
			if linger == nil {
				t := time.NewTimer(w.a.cfg.Linger)
				defer t.Stop()
				linger = t.C
			}
		}
		select {
		case <-w.wake:
		case <-linger:
			return true
		case <-w.quit:
			return false
		}
	}
}

// cut is how many queued records make the next batch, bounded by count and
// bytes (at least one record, however big), and whether that batch is full:
// more records could not join it. w.mu must be held.
func (w *partition) cut() (n int, full bool) {
	cfg := &w.a.cfg
	size := 0
	for n < len(w.queue) && n < cfg.MaxBatchRecords {
		size += len(w.queue[n].Key) + len(w.queue[n].Value)
		if size > cfg.MaxBatchBytes && n > 0 {
			break
		}
		n++
	}
	return n, n < len(w.queue) || n == cfg.MaxBatchRecords
}

// take removes the next batch from the queue, up to the batch bounds, and
// resumes fetching once the queue is down to one batch.
func (w *partition) take() []*kgo.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, _ := w.cut()
	batch := w.queue[:n:n]
	for _, r := range batch {
		w.queueBytes -= len(r.Key) + len(r.Value)
	}
	if w.queue = w.queue[n:]; len(w.queue) == 0 {
		w.queue = nil
	}
	cfg := &w.a.cfg
	if len(w.queue) < max(cfg.MaxBatchRecords, pauseRecords/2) && w.queueBytes < cfg.MaxBatchBytes {
		w.resume()
	}
	return batch
}

// putBack returns records taken but not applied to the front of the queue.
func (w *partition) putBack(recs []*kgo.Record) {
	if len(recs) == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, r := range recs {
		w.queueBytes += len(r.Key) + len(r.Value)
	}
	w.queue = append(recs[:len(recs):len(recs)], w.queue...)
}

// release resumes fetching the partition if the worker's queue paused it, so
// that a later assignment of the partition fetches it. Call it once the
// worker has stopped.
func (w *partition) release() {
	w.mu.Lock()
	w.resume()
	w.queue, w.queueBytes = nil, 0
	w.mu.Unlock()
}
