package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
)

// errStale means another member moved the partition's applied position: this
// member's view is out of date and its batch must not commit.
var errStale = errors.New("applied position moved by another consumer")

// applyWithRetry applies batch, retrying failures with backoff until it commits.
// It reports false when the worker must stop (its partition was released) before
// the batch committed; the batch is then rolled back and left to the next owner.
func (w *partition) applyWithRetry(batch []*kgo.Record) bool {
	a := w.a
	bo := newBackoff()
	for attempt := 1; ; attempt++ {
		select {
		case a.slots <- struct{}{}:
		case <-w.quit:
			return false
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

// applyOnce runs one transaction for batch.
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
	for i, r := range batch {
		decs[i] = decode(a.handler, r)
		if decs[i].poison == "" {
			items = append(items, dedup.Item{ID: decs[i].event.ID, Fingerprint: decs[i].fingerprint})
		}
	}

	tx, err := a.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after Commit this is a no-op

	// The compare-and-set comes first: it locks the position row, so a competing
	// member of the same partition waits here, then finds the position moved.
	tag, err := tx.Exec(ctx, `UPDATE applied_positions SET next_offset = $1 WHERE topic = $2 AND partition = $3 AND next_offset = $4`,
		next, a.cfg.Topic, w.p, w.next)
	if err != nil {
		return fmt.Errorf("move applied position: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errStale
	}
	statuses, err := dedup.Claim(ctx, tx, items)
	if err != nil {
		return err
	}
	fresh := make([]Event, 0, len(items))
	var bad []quarantined
	var dups, conflicts int64
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
	if len(fresh) > 0 {
		if err := a.handler.Apply(ctx, tx, fresh); err != nil {
			return fmt.Errorf("apply events: %w", err)
		}
	}
	if err := quarantine(ctx, tx, a.cfg.Topic, bad); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
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
