package applier

import (
	"context"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/internal/lograte"
)

// partition is the worker that applies one assigned partition.
//
// The poll loop hands it records with feed, which queues them and, when the
// queue is full (four batches), waits for the worker to take one, but only
// until a deadline shared by the whole poll (feedWait): a partition whose
// worker does not keep up by then has its fetching paused until the worker
// has taken its queue down to one batch. So a healthy partition gets
// backpressure without its fetched data being dropped and fetched again, and
// a partition whose batch keeps failing holds the poll loop up once, briefly,
// and then not at all: it holds back only itself, and rebalances are never
// kept waiting on it.
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
	// room holds a token when the worker took records from a full queue.
	room chan struct{}

	mu sync.Mutex
	// queue holds the records fed and not yet taken into a batch, in log
	// order, and their bytes.
	queue      []*kgo.Record
	queueBytes int
	// paused is set while the poll loop has paused fetching the partition.
	paused bool
	// released is set once the worker's partition was released (release):
	// feed must not pause it any more, since nothing of this worker would
	// resume it. The poll loop may still be feeding a worker that a
	// concurrent assignment (which runs beside the poll loop) replaced.
	released bool
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
	// lookups is how many more batches look their event IDs up before the
	// worker skips the lookup again (see skipLookup).
	lookups int
	// logs bounds how often the worker's retries are logged.
	logs *lograte.Limiter
	// recTime is the effective time of the record before next (see
	// recordTimes), read from the database when timed is not set.
	recTime time.Time
	timed   bool
}

// retryLogEvery is how often a worker logs a retry of one kind at most: a
// batch that keeps failing the same way writes a few lines a minute, each
// saying how many it stands for.
const retryLogEvery = 20 * time.Second

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
		room:    make(chan struct{}, 1),
		fed:     pos,
		next:    pos,
		poison:  make(map[int64]string),
		suspect: -1,
		logs:    lograte.New(retryLogEvery),
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

// feedWait bounds how long one poll's feeding waits for full queues to make
// room before pausing their partitions.
const feedWait = 100 * time.Millisecond

// feed queues fetched records, dropping those below what was queued before (a
// re-fetch after a pause or a seek). If that fills the queue, it waits until
// the worker takes a batch, the worker stops, or deadline passes; in the
// last case it pauses fetching the partition until the worker has taken the
// queue down to one batch. Records are never dropped: the queue may hold more
// than full until the pause takes effect.
func (w *partition) feed(recs []*kgo.Record, deadline time.Time) {
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
	w.queueBytes += recordBytes(recs...)
	full := w.full()
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	for full {
		t := time.NewTimer(time.Until(deadline))
		select {
		case <-w.room:
		case <-w.done:
		case <-t.C:
		}
		t.Stop()
		w.mu.Lock()
		if full = w.full(); full && !time.Now().Before(deadline) {
			// A worker that is stopping, or whose partition was released,
			// does not pause it: nothing of it would resume the fetch.
			if !w.paused && !w.released && !isDone(w.quit) {
				w.paused = true
				w.a.cl.PauseFetchPartitions(map[string][]int32{w.a.cfg.Topic: {w.p}})
				w.a.log.Debug("partition's worker does not keep up; fetching paused", "partition", w.p, "records", len(w.queue), "bytes", w.queueBytes)
			}
			full = false
		}
		if w.paused || isDone(w.done) {
			full = false
		}
		w.mu.Unlock()
	}
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// queuedBatches is how many full batches a partition's queue holds before
// feed waits: with two, the worker ran dry often enough to drain 15% slower
// than with four, which cost no more memory (heed bench, drain and rss).
const queuedBatches = 4

// full reports whether the queue holds queuedBatches batches by count or by
// bytes. w.mu must be held.
func (w *partition) full() bool {
	cfg := &w.a.cfg
	return len(w.queue) >= queuedBatches*cfg.MaxBatchRecords || w.queueBytes >= queuedBatches*cfg.MaxBatchBytes
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
	bytes := 0
	limit, limited := w.a.limit(w.p)
	for n < len(w.queue) && n < cfg.MaxBatchRecords {
		if limited && w.queue[n].Offset >= limit {
			// Records at the limit wait for it to rise (SetLimits): the
			// batch is as full as it gets.
			return n, true
		}
		if isControl(w.queue[n]) {
			// A control record is applied alone, in a transaction of its
			// own (see applyControl).
			if n == 0 {
				return 1, true
			}
			return n, true
		}
		bytes += recordBytes(w.queue[n])
		if bytes > cfg.MaxBatchBytes && n > 0 {
			break
		}
		n++
	}
	return n, n < len(w.queue) || n == cfg.MaxBatchRecords
}

// take removes the next batch from the queue, up to the batch bounds, tells
// a waiting feed there is room, and resumes fetching once the queue is down to
// one batch.
func (w *partition) take() []*kgo.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, _ := w.cut()
	batch := w.queue[:n:n]
	w.queueBytes -= recordBytes(batch...)
	if w.queue = w.queue[n:]; len(w.queue) == 0 {
		w.queue = nil
	}
	if !w.full() {
		select {
		case w.room <- struct{}{}:
		default:
		}
	}
	cfg := &w.a.cfg
	if len(w.queue) <= cfg.MaxBatchRecords && w.queueBytes <= cfg.MaxBatchBytes {
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
	w.queueBytes += recordBytes(recs...)
	w.queue = append(recs[:len(recs):len(recs)], w.queue...)
}

// release resumes fetching the partition if the worker's queue paused it, so
// that a later assignment of the partition fetches it. Call it once the
// worker has stopped.
func (w *partition) release() {
	w.mu.Lock()
	w.released = true
	w.resume()
	w.queue, w.queueBytes = nil, 0
	w.mu.Unlock()
}

// recordBytes is the bytes of recs that count against MaxBatchBytes: keys and values.
func recordBytes(recs ...*kgo.Record) int {
	n := 0
	for _, r := range recs {
		n += len(r.Key) + len(r.Value)
	}
	return n
}
