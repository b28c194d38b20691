package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/pgarray"
)

// errStale means another member moved the partition's applied position: this
// member's view is out of date and its batch must not commit.
var errStale = errors.New("applied position moved by another consumer")

// applyWithRetry applies batch, retrying failures with backoff until it commits.
// It is called holding a slot, which it gives back after the first attempt and
// takes again for each retry. It reports false when the worker must stop (its
// partition was released) before the batch committed; the batch is then rolled
// back and left to the next owner.
func (w *partition) applyWithRetry(batch []*kgo.Record) bool {
	a := w.a
	bo := newBackoff()
	for attempt := 1; ; attempt++ {
		if attempt > 1 {
			select {
			case a.slots <- struct{}{}:
			case <-w.quit:
				return false
			}
		}
		err := w.applyOnce(a.hard, batch)
		<-a.slots
		if err == nil {
			a.cl.MarkCommitRecords(batch[len(batch)-1])
			return true
		}
		if errors.Is(err, errStale) {
			a.stats.stale.Add(1)
			return w.resync(batch)
		}
		if a.hard.Err() != nil {
			return false
		}
		a.stats.retries.Add(1)
		if errors.Is(err, dedup.ErrRecordedConcurrently) {
			// The same event ID in another partition (or topic), committed
			// since the lookup: nothing failed, and the retry skips it.
			a.log.Info("an event ID of the batch was recorded meanwhile by a concurrent transaction (the same ID in another partition or topic); rolled back, retrying at once",
				"partition", w.p, "first_offset", batch[0].Offset, "records", len(batch), "err", err)
			continue
		}
		wait := bo.NextBackOff()
		a.log.Warn("apply batch failed; rolled back, retrying", "partition", w.p,
			"first_offset", batch[0].Offset, "records", len(batch), "attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-time.After(wait):
		case <-w.quit:
			return false
		}
	}
}

// resync re-reads the applied position after a failed compare-and-set and goes
// on from there with the records it holds (batch, the one rolled back, first):
// applyOnce skips those below the new position. It does not seek: feed drops
// re-fetched records below what it queued before, so a seek back would lose
// records for good. A position that moved backwards (the database was rewound
// under a running applier) cannot be served from what is held, so the worker
// stops until the partition is reassigned.
func (w *partition) resync(batch []*kgo.Record) bool {
	a := w.a
	var pos int64
	bo := newBackoff()
	for {
		var err error
		if pos, err = loadPosition(a.hard, a.pool, a.cfg.Topic, w.p); err == nil {
			break
		}
		wait := bo.NextBackOff()
		a.log.Warn("re-read applied position failed; retrying", "partition", w.p, "retry_in", wait, "err", err)
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
	a.log.Warn("applied position moved by another consumer; batch rolled back, going on from there", "partition", w.p, "expected", w.next, "found", pos)
	w.next = pos
	w.pending = append(batch[:len(batch):len(batch)], w.pending...)
	return true
}

// applyOnce runs one transaction for batch, on one connection, in pipelined
// round trips (see begin and commit): two for a BatchHandler, two plus Apply's
// own for a plain Handler. The first looks the batch's event IDs up, which
// tells new from duplicate and conflict; the second records the new ones with
// the state change. An ID another transaction recorded in between fails the
// second on its key: that rolls everything back, and the retry finds it.
func (w *partition) applyOnce(ctx context.Context, batch []*kgo.Record) error {
	a := w.a
	// Records below the known position were applied already (a re-fetch).
	for len(batch) > 0 && batch[0].Offset < w.next {
		batch = batch[1:]
	}
	if len(batch) == 0 {
		return nil
	}
	next := batch[len(batch)-1].Offset + 1

	decs := make([]decoded, len(batch))
	items := make([]dedup.Item, 0, len(batch))
	events := make([]Event, 0, len(batch))
	for i, r := range batch {
		decs[i] = decode(a.handler, r)
		if decs[i].poison == "" {
			items = append(items, dedup.Item{ID: decs[i].event.ID, Fingerprint: decs[i].fingerprint})
			events = append(events, decs[i].event)
		}
	}

	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire database connection: %w", err)
	}
	defer release(conn) // rolls back unless COMMIT went through
	pgarray.Register(conn.Conn().TypeMap())
	t, err := w.begin(ctx, conn, next, items, events)
	if err != nil {
		return err
	}
	statuses, err := t.lookup.Statuses()
	if err != nil {
		return err
	}
	fresh, bad, dups, conflicts := classify(decs, statuses)
	if err := w.commit(ctx, t, fresh, bad); err != nil {
		return err
	}

	w.next = next
	s := &a.stats
	s.batches.Add(1)
	s.applied.Add(int64(len(fresh)))
	s.duplicates.Add(dups)
	s.conflicts.Add(conflicts)
	s.quarantined.Add(int64(len(bad)) - conflicts)
	for _, q := range bad {
		a.log.Warn("record quarantined", "kind", q.kind, "partition", q.rec.Partition, "offset", q.rec.Offset, "reason", q.reason)
	}
	return nil
}

// classify splits a batch by what decoding and the claim found: the new events
// to apply, the records to quarantine (poison ones and conflicts), and how
// many were duplicates and conflicts. statuses holds one status per decodable
// record, in order.
func classify(decs []decoded, statuses []dedup.Status) (fresh []Event, bad []quarantined, dups, conflicts int64) {
	fresh = make([]Event, 0, len(statuses))
	j := 0
	for _, d := range decs {
		if d.poison != "" {
			bad = append(bad, quarantined{rec: d.rec, kind: "poison", reason: d.poison})
			continue
		}
		switch statuses[j] {
		case dedup.New:
			fresh = append(fresh, d.event)
		case dedup.Duplicate:
			dups++
		case dedup.Conflict:
			conflicts++
			bad = append(bad, quarantined{rec: d.rec, kind: "conflict", eventID: &d.event.ID,
				reason: fmt.Sprintf("request_id %q was reused with different content; the first command with it stands", d.event.RequestID)})
		}
		j++
	}
	return fresh, bad, dups, conflicts
}
