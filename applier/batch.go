package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/failpoint"
	"github.com/heed-dev/heed/pgarray"
)

// retried tells the Observer, if any, of a retried attempt.
func (a *Applier) retried(p int32, class string) {
	if o := a.cfg.Observer; o != nil {
		o.BatchRetried(p, class)
	}
}

// errStale means another member moved the partition's applied position: this
// member's view is out of date and its batch must not commit.
var errStale = errors.New("applied position moved by another consumer")

// applyBatch applies batch, in log order, in one transaction or, when an
// event of it makes the transaction fail, in several: the failing part is
// halved until the event is found alone and quarantined (see Classify). It is
// called holding a slot; every later attempt takes one again. It reports
// false when the worker must stop (its partition was released) before the
// batch committed; what did not commit is rolled back and left to the next
// owner.
func (w *partition) applyBatch(batch []*kgo.Record) bool {
	a := w.a
	rest := batch // not committed yet
	size := len(rest)
	bo := newBackoff()
	// tried holds the failures retried at once since the last commit.
	var tried map[string]bool
	for attempt := 1; ; attempt++ {
		// Records below the known position were applied already (a
		// re-fetch, or another member's work found by resync).
		for len(rest) > 0 && rest[0].Offset < w.next {
			rest = rest[1:]
		}
		if len(rest) == 0 {
			if attempt == 1 {
				// run took a slot for this attempt: give it back. Keeping
				// it lost one of the Concurrency slots for good per such
				// batch (records a resync put back, below the position),
				// until no partition of the member applied again (issue
				// 26, hole 7: after a broker restart both members of a
				// KIP-848 group applied the same partitions for a moment).
				<-a.slots
			}
			return true
		}
		if attempt > 1 {
			select {
			case a.slots <- struct{}{}:
			case <-w.quit:
				return false
			}
		}
		cur := rest[:min(size, len(rest))]
		ctx, cancel := context.WithTimeout(w.ctx, a.cfg.BatchTimeout)
		skipped := w.skipLookup()
		err := w.applyOnce(ctx, cur, skipped)
		cancel()
		<-a.slots
		if err == nil {
			failpoint.Hit("apply/after-commit")
			a.cl.MarkCommitRecords(cur[len(cur)-1])
			rest = rest[len(cur):]
			size = len(rest) // the rest may well apply whole
			bo.Reset()
			tried = nil
			continue
		}
		if errors.Is(err, errStale) {
			a.stats.stale.Add(1)
			return w.resync(rest)
		}
		if w.ctx.Err() != nil {
			return false
		}
		// A retry that changes what the next attempt does (the lookup no
		// longer skipped, a record newly found poison, a smaller batch) may
		// go at once; the same failure again waits like any other.
		immediate := func(sig string) bool {
			if tried[sig] {
				return false
			}
			if tried == nil {
				tried = make(map[string]bool)
			}
			tried[sig] = true
			return true
		}
		sig := fmt.Sprintf("@%d+%d", cur[0].Offset, len(cur))
		if skipped {
			// The attempt skipped the lookup (see skipLookup): it may have
			// failed on an event recorded before (a duplicate in the topic
			// fails the processed-event key, or the handler, which should
			// never have seen it). Its failure decides nothing: the retry
			// looks up, at once, and so do the next batches for a while.
			w.lookups = lookupsAfterDuplicate
			a.stats.retries.Add(1)
			a.stats.lookupRetries.Add(1)
			a.retried(w.p, "lookup-skipped")
			if !errors.Is(err, dedup.ErrRecordedConcurrently) {
				a.log.Debug("a batch that skipped the dedup lookup failed; applying it again with the lookup", "partition", w.p,
					"first_offset", cur[0].Offset, "records", len(cur), "err", err)
			}
			if immediate("lookup-skipped" + sig) {
				continue
			}
			if !w.pause(bo, "lookup-skipped", Transient, cur, attempt, err) {
				return false
			}
			continue
		}
		a.stats.retries.Add(1)
		class := Classify(err)
		var qe *quarantineError
		label := class.String()
		switch {
		case errors.As(err, &qe):
			label = "quarantine-store"
		case errors.Is(err, dedup.ErrRecordedConcurrently):
			label = "recorded-concurrently"
		}
		a.retried(w.p, label)
		switch {
		case qe != nil:
			// Storing the batch's quarantined or parked records failed: no
			// record's shape can cause that (see queueQuarantine), so it is
			// retried with backoff, whatever its class, and splitting the
			// batch or quarantining more would not help.
		case errors.Is(err, dedup.ErrRecordedConcurrently):
			// The same event ID in another partition (or topic), committed
			// since the lookup: nothing failed, and the retry skips it.
			if immediate(label + sig) {
				w.logs.Log(a.log.Info, "an event ID of the batch was recorded meanwhile by a concurrent transaction (the same ID in another partition or topic); rolled back, retrying at once",
					"partition", w.p, "first_offset", cur[0].Offset, "records", len(cur), "err", err)
				continue
			}
		case class == Poison:
			var ee *EventError
			errors.As(err, &ee)
			if w.markPoison(cur, ee.Offset, storable(ee.Reason)) {
				if immediate(fmt.Sprintf("poison@%d", ee.Offset)) {
					w.logs.Log(a.log.Warn, "the handler rejected an event as one that can never apply; rolled back, applying the batch again without it",
						"partition", w.p, "offset", ee.Offset, "reason", ee.Reason)
					continue
				}
				break
			}
			class = Transient // an offset outside the batch: a handler bug, not a poison event
			err = fmt.Errorf("%w (the handler named offset %d, which is not in the batch at %d..%d)", err, ee.Offset, cur[0].Offset, cur[len(cur)-1].Offset)
		case class == EventCaused && len(cur) > 1:
			size = len(cur) / 2
			w.logs.Log(a.log.Warn, "apply batch failed with an error an event may cause; rolled back, splitting the batch to find the event",
				"partition", w.p, "first_offset", cur[0].Offset, "records", len(cur), "next_records", size, "err", err)
			continue
		case class == EventCaused:
			off := cur[0].Offset
			if w.suspect == off {
				w.markPoison(cur, off, failsInDatabase(err))
				if immediate(fmt.Sprintf("poison@%d", off)) {
					w.logs.Log(a.log.Warn, "an event fails alone, twice, with an error an event may cause; quarantining it",
						"partition", w.p, "offset", off, "err", err)
					continue
				}
				break
			}
			w.suspect = off
		}
		if !w.pause(bo, label, class, cur, attempt, err) {
			return false
		}
	}
}

// pause logs a failed attempt at batch (at a bounded rate; as an error when
// it needs an operator: a systemic failure, or the quarantine's store
// failing) and waits for the next backoff interval; false if the worker must
// stop meanwhile.
func (w *partition) pause(bo *backoff.ExponentialBackOff, label string, class ErrorClass, batch []*kgo.Record, attempt int, err error) bool {
	a := w.a
	wait := bo.NextBackOff()
	log := a.log.Warn
	if class == Systemic || label == "quarantine-store" {
		log = a.log.Error
	}
	w.logs.Log(log, "apply batch failed; rolled back, retrying", "partition", w.p, "class", label,
		"first_offset", batch[0].Offset, "records", len(batch), "attempt", attempt, "retry_in", wait, "err", err)
	select {
	case <-time.After(wait):
		return true
	case <-w.quit:
		return false
	}
}

// lookupsAfterDuplicate is how many batches of a partition look their event
// IDs up after one found a duplicate: duplicates come in runs (a producer's
// retried batch, a replayed range).
const lookupsAfterDuplicate = 16

// skipLookup says whether the next batch may skip the dedup lookup: the
// table holds no row without a key, and no recent batch of the partition met
// a duplicate or failed. A batch that skips it and holds an event recorded
// before fails on the processed-event primary key (if nothing failed before),
// rolls back and is retried at once with the lookup: the key is the arbiter
// either way, and a stream without duplicates (the usual case) saves one
// index probe per event. A batch that skipped it and failed in any other way
// is retried at once with the lookup too, so that whether an event is
// quarantined is never decided from an attempt that treated a duplicate as
// new.
func (w *partition) skipLookup() bool {
	return w.lookups == 0 && w.a.optimistic.Load()
}

// markPoison records that the record of batch at offset is poison, so that
// the next attempt quarantines it; false if no live record has that offset.
func (w *partition) markPoison(batch []*kgo.Record, offset int64, reason string) bool {
	for _, r := range batch {
		if r.Offset == offset && r.Offset >= w.next {
			w.poison[offset] = reason
			return true
		}
	}
	return false
}

// resync re-reads the applied position after a failed compare-and-set and goes
// on from there with the records it holds (rest, the ones not committed, first):
// applyOnce skips those below the new position. It does not seek: feed drops
// re-fetched records below what it queued before, so a seek back would lose
// records for good. A position that moved backwards (the database was rewound
// under a running applier) cannot be served from what is held, so the worker
// stops until the partition is reassigned.
func (w *partition) resync(rest []*kgo.Record) bool {
	a := w.a
	var pos int64
	bo := newBackoff()
	for {
		var err error
		if pos, err = loadPosition(w.ctx, a.pool, a.cfg.Topic, w.p); err == nil {
			break
		}
		if errors.Is(err, ErrRetired) {
			a.fail(err)
			return false
		}
		wait := bo.NextBackOff()
		w.logs.Log(a.log.Warn, "re-read applied position failed; retrying", "partition", w.p, "retry_in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-w.quit:
			return false
		}
	}
	if pos < w.next {
		a.log.Error("applied position moved backwards; stopping partition until reassigned", "partition", w.p, "expected", w.next, "found", pos)
		return false
	}
	if pos == w.next {
		// The compare-and-set failed on a position that did not move: the
		// row it waited for was retired (heed rebuild --swap), and this
		// read found the projection that took the schema's name.
		a.log.Info("the projection was swapped (heed rebuild --swap); batch rolled back, going on in the live one", "partition", w.p, "position", pos)
	} else {
		a.log.Warn("applied position moved by another consumer; batch rolled back, going on from there", "partition", w.p, "expected", w.next, "found", pos)
	}
	w.next, w.timed = pos, false
	w.putBack(rest)
	return true
}

// applyOnce runs one transaction for batch, on one connection, in pipelined
// round trips (see begin and commit): two for a BatchHandler, two plus Apply's
// own for a plain Handler. The first looks the batch's event IDs and its
// parked keys up, which tells new from duplicate, conflict and parked; the
// second records the new ones with the state change. An ID another
// transaction recorded in between fails the second on its key: that rolls
// everything back, and the retry finds it. batch is not empty and starts at
// the applied position (applyBatch trims what lies below it).
func (w *partition) applyOnce(ctx context.Context, batch []*kgo.Record, skipLookup bool) error {
	a := w.a
	if len(batch) == 1 && isControl(batch[0]) {
		return w.applyControl(ctx, batch[0])
	}
	began := time.Now()
	next := batch[len(batch)-1].Offset + 1

	decs := make([]decoded, len(batch))
	var newest time.Time // the batch's latest record timestamp
	items := make([]dedup.Item, 0, len(batch))
	events := make([]Event, 0, len(batch))
	for i, r := range batch {
		decs[i] = decode(a.handler, r)
		if r.Timestamp.After(newest) {
			newest = r.Timestamp
		}
		if reason, ok := w.poison[r.Offset]; ok && decs[i].poison == "" {
			decs[i].poison = reason
		}
		if decs[i].poison == "" {
			ev := &decs[i].event
			items = append(items, dedup.Item{ID: ev.ID, Key: ev.AggregateID, Fingerprint: decs[i].fingerprint, KeyHash: dedup.KeyHash(ev.AggregateID)})
			events = append(events, decs[i].event)
		}
	}

	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire database connection: %w", err)
	}
	defer release(conn) // rolls back unless COMMIT went through
	pgarray.Register(conn.Conn().TypeMap())
	t, err := w.begin(ctx, conn, next, newest, items, events, skipLookup)
	if err != nil {
		return err
	}
	// The partition's record time is known now (begin read it, if the
	// worker did not know it): the items get their records' times before
	// the lookup's statuses are worked out, which compare them.
	last := recordTimes(decs, w.recTime)
	k := 0
	for i := range decs {
		if decs[i].poison == "" {
			items[k].Time = decs[i].at
			decs[i].event.Time = decs[i].at
			events[k].Time = decs[i].at
			k++
		}
	}
	failpoint.Hit("apply/after-lookup")
	out, err := sortBatch(decs, t.lookup, t.parked)
	if err != nil {
		return err
	}
	if err := w.commit(ctx, t, out); err != nil {
		return err
	}
	if t.emitted > 0 && a.cfg.OnEmit != nil {
		a.cfg.OnEmit(w.p)
	}

	w.next, w.recTime = next, last
	for off := range w.poison {
		if off < next {
			delete(w.poison, off)
		}
	}
	w.suspect = -1
	switch {
	case out.dups > 0 || out.conflicts > 0:
		w.lookups = lookupsAfterDuplicate
	case w.lookups > 0:
		w.lookups--
	}
	s := &a.stats
	s.batches.Add(1)
	s.applied.Add(int64(len(out.fresh)))
	s.duplicates.Add(out.dups)
	s.conflicts.Add(out.conflicts)
	s.quarantined.Add(out.poison)
	s.parked.Add(out.parkedN)
	if o := a.cfg.Observer; o != nil {
		o.BatchApplied(w.p, batch, time.Since(began), BatchStats{Applied: len(out.fresh), Duplicates: int(out.dups),
			Conflicts: int(out.conflicts), Quarantined: int(out.poison), Parked: int(out.parkedN)})
	}
	for _, q := range out.bad {
		if q.kind != kindParked {
			a.log.Warn("record quarantined", "kind", q.kind, "partition", q.rec.Partition, "offset", q.rec.Offset, "reason", q.reason)
		}
	}
	if out.parkedN > 0 {
		a.log.Warn("records parked behind a quarantined record of their key", "partition", w.p, "records", out.parkedN)
	}
	return nil
}
