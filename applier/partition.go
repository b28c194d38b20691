package applier

import (
	"context"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// partition is the worker that applies one assigned partition.
type partition struct {
	a    *Applier
	p    int32
	in   chan []*kgo.Record
	quit chan struct{}
	done chan struct{}

	// fed: offsets below it were queued already. Only the poll loop uses it.
	fed int64
	// next: the applied position in the database as this worker knows it. Only
	// the worker goroutine uses it.
	next int64
	// pending holds records taken from in but not yet batched.
	pending []*kgo.Record
}

func startPartition(a *Applier, p int32, pos int64) *partition {
	w := &partition{
		a: a,
		p: p,
		// Two polls' worth queued per partition: fetched records pin their whole
		// fetch buffer, so deeper queues cost memory (4: ~420 MiB RSS draining
		// 2 M events) for no speed (`heed bench --phases drain,rss`).
		in:   make(chan []*kgo.Record, 2),
		quit: make(chan struct{}),
		done: make(chan struct{}),
		fed:  pos,
		next: pos,
	}
	go w.run()
	return w
}

// stop asks the worker to finish its in-flight batch and return; wait on done.
func (w *partition) stop() {
	select {
	case <-w.quit:
	default:
		close(w.quit)
	}
}

// feed queues fetched records, dropping those below what was queued before
// (a re-fetch after a seek). It blocks while the worker is busy, which bounds
// buffered memory, and returns at once when the worker stops or ctx ends.
func (w *partition) feed(ctx context.Context, recs []*kgo.Record) {
	i := 0
	for i < len(recs) && recs[i].Offset < w.fed {
		i++
	}
	recs = recs[i:]
	if len(recs) == 0 {
		return
	}
	select {
	case w.in <- recs:
		w.fed = recs[len(recs)-1].Offset + 1
	case <-w.quit:
	case <-w.done: // the worker stopped by itself; the partition waits for reassignment
	case <-ctx.Done():
	}
}

func (w *partition) run() {
	defer close(w.done)
	a := w.a
	for {
		if !w.wait() {
			return
		}
		select {
		case a.slots <- struct{}{}:
		case <-w.quit:
			return
		}
		// Cut the batch only now: what arrived while this partition waited
		// for a slot (other partitions' transactions) joins it, instead of
		// waiting for a transaction of its own.
		if !w.applyWithRetry(w.take()) {
			return
		}
	}
}

// wait blocks until records are pending and then, with a Linger, until a
// full batch is pending or Linger has passed; false when the worker must stop.
func (w *partition) wait() bool {
	if len(w.pending) == 0 {
		select {
		case recs := <-w.in:
			w.pending = recs[:len(recs):len(recs)] // appends must not write into the fetch's array
		case <-w.quit:
			return false
		}
	}
	if w.a.cfg.Linger <= 0 {
		return true
	}
	t := time.NewTimer(w.a.cfg.Linger)
	defer t.Stop()
	for {
		if w.drain() {
			return true
		}
		select {
		case recs := <-w.in:
			w.pending = append(w.pending, recs...)
		case <-t.C:
			return true
		case <-w.quit:
			return false
		}
	}
}

// drain moves records already queued on in to pending until a full batch is
// pending, without waiting; it reports whether one is.
func (w *partition) drain() bool {
	for {
		if _, full := w.cut(); full {
			return true
		}
		select {
		case recs := <-w.in:
			w.pending = append(w.pending, recs...)
		default:
			return false
		}
	}
}

// cut is how many pending records make the next batch, bounded by count and
// bytes (at least one record, however big), and whether that batch is full:
// more records could not join it.
func (w *partition) cut() (n int, full bool) {
	cfg := &w.a.cfg
	size := 0
	for n < len(w.pending) && n < cfg.MaxBatchRecords {
		size += len(w.pending[n].Key) + len(w.pending[n].Value)
		if size > cfg.MaxBatchBytes && n > 0 {
			break
		}
		n++
	}
	return n, n < len(w.pending) || n == cfg.MaxBatchRecords
}

// take returns the next batch: the pending records and those already queued,
// up to the batch bounds. Records past them stay pending.
func (w *partition) take() []*kgo.Record {
	w.drain()
	n, _ := w.cut()
	batch := w.pending[:n:n]
	if w.pending = w.pending[n:]; len(w.pending) == 0 {
		w.pending = nil
	}
	return batch
}
