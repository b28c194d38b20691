package applier

import (
	"context"
	"errors"
	"time"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/topic"
)

// recheckInterval is how often a held partition (one the projection's
// recorded partition count does not cover) asks whether it is covered now.
const recheckInterval = 2 * time.Second

// bindTopic checks that the broker's topic is the incarnation the projection
// is built from (topic.Bind) and keeps the recorded partition count: the
// partitions it does not cover are held. It also finds whether batches may
// skip the dedup lookup (see skipLookup). Failures to reach the broker or the
// database are retried with backoff until ctx ends (then it returns nil). It
// returns nil when the topic does not exist yet (it is checked again when
// partitions are assigned), and an error that must stop the applier when the
// topic is another incarnation, is missing while the projection has one
// recorded, or the projection is ahead of it.
func (a *Applier) bindTopic(ctx context.Context) error {
	bo := newBackoff()
	for {
		err := a.bindTopicOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil || errors.Is(err, topic.ErrOtherIncarnation) || errors.Is(err, topic.ErrAheadOfTopic) || errors.Is(err, ErrWindowChanged) {
			return err
		}
		wait := bo.NextBackOff()
		a.logs.Log(a.log.Warn, "cannot check the topic's identity; retrying", "topic", a.cfg.Topic, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

func (a *Applier) bindTopicOnce(ctx context.Context) error {
	// While at it, the first time, find whether batches may skip the dedup
	// lookup: no row without a key is ever added, so the answer holds.
	if !a.keylessChecked.Load() {
		keyless, err := dedup.HasKeylessRows(ctx, a.pool)
		if err != nil {
			return err
		}
		a.optimistic.Store(!keyless)
		a.keylessChecked.Store(true)
		if keyless {
			a.log.Info("the processed-event table holds rows recorded before rows carried keys; every batch looks its event IDs up")
		}
	}
	if !a.windowBound.Load() {
		if err := BindWindow(ctx, a.pool, a.cfg.DedupWindow); err != nil {
			return err
		}
		a.windowBound.Store(true)
	}
	rec, err := topic.Verify(ctx, a.pool, a.cl, a.cfg.Topic)
	switch {
	case errors.Is(err, topic.ErrMissing):
		a.log.Info("the topic does not exist yet; waiting for it", "topic", a.cfg.Topic)
		return nil
	case errors.Is(err, topic.ErrPartitionsChanged):
		a.log.Error("holding the topic's new partitions", "topic", a.cfg.Topic, "err", err)
	case err != nil:
		return err
	}
	a.covered.Store(rec.Partitions)
	a.coveredAt.Store(time.Now().UnixNano())
	return nil
}

// covers reports whether the projection's recorded partition count covers
// partition p, re-reading it at most every recheckInterval.
func (a *Applier) covers(ctx context.Context, p int32) bool {
	if n := a.covered.Load(); n == 0 || p < n {
		return true
	}
	if time.Since(time.Unix(0, a.coveredAt.Load())) < recheckInterval {
		return false
	}
	a.coveredAt.Store(time.Now().UnixNano())
	rec, ok, err := topic.Recorded(ctx, a.pool, a.cfg.Topic)
	if err != nil || !ok {
		return false
	}
	a.covered.Store(rec.Partitions)
	return p < rec.Partitions
}

// fail stops Run with err, which Run returns.
func (a *Applier) fail(err error) {
	a.log.Error("applier stopping", "err", err)
	a.stop(err)
}
