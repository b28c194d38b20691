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
	for {
		batch := w.collect()
		if batch == nil {
			return
		}
		if !w.applyWithRetry(batch) {
			return
		}
	}
}

// collect returns the next batch, bounded by count and bytes, waiting up to
// Linger for more once it has some; nil when the worker must stop.
func (w *partition) collect() []*kgo.Record {
	cfg := &w.a.cfg
	if len(w.pending) == 0 {
		select {
		case recs := <-w.in:
			w.pending = recs[:len(recs):len(recs)] // appends must not write into the fetch's array
		case <-w.quit:
			return nil
		}
	}
	var linger <-chan time.Time
	if cfg.Linger > 0 {
		t := time.NewTimer(cfg.Linger)
		defer t.Stop()
		linger = t.C
	}
	for {
		n, size := 0, 0
		for n < len(w.pending) && n < cfg.MaxBatchRecords {
			size += len(w.pending[n].Key) + len(w.pending[n].Value)
			if size > cfg.MaxBatchBytes && n > 0 {
				break
			}
			n++
		}
		if n < len(w.pending) || n == cfg.MaxBatchRecords {
			batch := w.pending[:n:n]
			w.pending = w.pending[n:]
			return batch
		}
		// Everything pending fits: take more if it is already there (or within linger).
		select {
		case recs := <-w.in:
			w.pending = append(w.pending, recs...)
			continue
		default:
		}
		if linger != nil {
			select {
			case recs := <-w.in:
				w.pending = append(w.pending, recs...)
				continue
			case <-linger:
				linger = nil
			case <-w.quit:
			}
		}
		batch := w.pending
		w.pending = nil
		return batch
	}
}
