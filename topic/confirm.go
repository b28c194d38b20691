package topic

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
)

// ErrNotDrained is wrapped by ConfirmPartitions' error when the old
// partitions still have events to apply when its context ends.
var ErrNotDrained = errors.New("the old partitions are not drained")

// ConfirmPartitions accepts the topic's new partition count for the
// projection, in a way that keeps each key's events in order: keys hash over
// the new count only once every event written with the old count is applied.
// It waits until, in every partition the projection was built with, the
// applied position has reached the end and no record is quarantined or
// parked (their keys' later events may land in another partition), then waits
// fence (longer than a Guard's interval, so that every serve refuses commands
// by then) and checks that the ends did not move before recording the new
// count. Guards then admit commands hashed over it, and appliers start the new
// partitions. progress, if not nil, is told what it waits for.
//
// It returns the identity recorded. Errors: ErrOtherIncarnation when the
// topic is another incarnation; an error wrapping ErrNotDrained when ctx ends
// first; an error when the partition count did not grow.
func ConfirmPartitions(ctx context.Context, q Querier, cl *kgo.Client, name string, fence time.Duration, progress func(string)) (Identity, error) {
	if progress == nil {
		progress = func(string) {}
	}
	live, err := Describe(ctx, cl, name)
	if err != nil {
		return Identity{}, err
	}
	rec, ok, err := Recorded(ctx, q, name)
	if err != nil {
		return Identity{}, err
	}
	switch {
	case !ok:
		return Identity{}, fmt.Errorf("no topic identity is recorded for %s in this schema: nothing to confirm (serve, apply and dev record it on first use)", name)
	case rec.ID != live.ID:
		return Identity{}, fmt.Errorf("%w: the projection was built from %s, the broker has topic ID %s; confirming partitions cannot fix that", ErrOtherIncarnation, rec, live.ID)
	case live.Partitions == rec.Partitions:
		return rec, nil
	case live.Partitions < rec.Partitions:
		return Identity{}, fmt.Errorf("topic %s has %d partitions, fewer than the %d the projection was built with: Kafka cannot remove partitions, so this is another topic", name, live.Partitions, rec.Partitions)
	}
	var (
		ends map[int32]int64
		last string // what was left at the last look
	)
	for {
		var why string
		if ends, why, err = drained(ctx, q, cl, rec); err != nil {
			if ctx.Err() != nil && last != "" { // ctx ended while looking again: say what was left
				return Identity{}, fmt.Errorf("%w (%s): %v", ErrNotDrained, last, ctx.Err())
			}
			return Identity{}, err
		}
		last = why
		if why == "" {
			progress(fmt.Sprintf("partitions 0-%d are drained; waiting %v for every serve to refuse commands", rec.Partitions-1, fence))
			if err := sleep(ctx, fence); err != nil {
				return Identity{}, fmt.Errorf("%w: %v", ErrNotDrained, err)
			}
			again, why, err := drained(ctx, q, cl, rec)
			if err != nil {
				return Identity{}, err
			}
			if why == "" && maps.Equal(again, ends) {
				break
			}
			progress("events arrived meanwhile (is a serve still admitting commands?); waiting again")
			continue
		}
		progress(why)
		if err := sleep(ctx, time.Second); err != nil {
			return Identity{}, fmt.Errorf("%w (%s): %v", ErrNotDrained, why, err)
		}
	}
	tag, err := q.Exec(ctx, `UPDATE topic_identity SET partitions = $3 WHERE topic = $1 AND partitions = $2`, name, rec.Partitions, live.Partitions)
	if err != nil {
		return Identity{}, fmt.Errorf("record the new partition count: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return Identity{}, fmt.Errorf("the recorded identity of %s changed meanwhile; run the command again", name)
	}
	rec.Partitions = live.Partitions
	return rec, nil
}

// drained returns the ends of rec's partitions and "" when each is applied to
// its end with nothing quarantined or parked, or else what is left.
func drained(ctx context.Context, q Querier, cl *kgo.Client, rec Identity) (map[int32]int64, string, error) {
	all, err := consistency.ListEndOffsets(ctx, cl, rec.Name)
	if err != nil {
		return nil, "", err
	}
	applied := make(map[int32]int64, rec.Partitions)
	rows, err := q.Query(ctx, `SELECT partition, next_offset FROM applied_positions WHERE topic = $1 AND partition < $2`, rec.Name, rec.Partitions)
	if err != nil {
		return nil, "", fmt.Errorf("read applied positions: %w", err)
	}
	var (
		part int32
		next int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&part, &next}, func() error { applied[part] = next; return nil }); err != nil {
		return nil, "", fmt.Errorf("read applied positions: %w", err)
	}
	ends := make(map[int32]int64, rec.Partitions)
	var behind int64
	for p := range rec.Partitions {
		ends[p] = all[p]
		behind += max(all[p]-applied[p], 0)
	}
	if behind > 0 {
		return ends, fmt.Sprintf("%d events of partitions 0-%d are not applied yet (is heed apply running?)", behind, rec.Partitions-1), nil
	}
	var open int64
	err = q.QueryRow(ctx, `SELECT count(*) FROM quarantine WHERE topic = $1 AND partition < $2 AND state = 'open' AND kind IN ('poison', 'parked')`,
		rec.Name, rec.Partitions).Scan(&open)
	if err != nil {
		return nil, "", fmt.Errorf("read quarantine: %w", err)
	}
	if open > 0 {
		return ends, fmt.Sprintf("%d records are quarantined or parked in partitions 0-%d: re-drive or drop them first (heed quarantine list)", open, rec.Partitions-1), nil
	}
	return ends, "", nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
