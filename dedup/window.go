package dedup

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/heed-dev/heed/pgarray"
)

// The dedup window. Whether an event is a duplicate must be decided by the
// topic alone (see docs/REPLAY.md): live, resumed and replayed, before and
// after any pruning. So an event with time T (its record's effective time,
// see Item.Time) is a Duplicate or a Conflict of a processed row with time t
// only when T - t <= window; a row further back is expired: the event is
// New, applied again, and its row replaces the expired one. Package
// retention prunes only rows that no later record can find within the
// window, so pruning never changes a decision.
//
// A window of 0 is no window: a processed row stands forever. A row or an
// item without a time (recorded before rows carried one) is always within
// the window.

// entry is what the table (or an earlier item of the same claim) holds for
// one event: its fingerprint and time.
type entry struct {
	fp int64
	// at is the row's event_time in Unix microseconds, when timed.
	at    int64
	timed bool
	// batch is 1 + the index of the item of the same lookup that set the
	// entry, or 0 for a row read from the table.
	batch int
}

// expired reports whether e is outside window before an event at t.
func (e entry) expired(window time.Duration, t time.Time) bool {
	if window <= 0 || !e.timed || t.IsZero() {
		return false
	}
	return t.UnixMicro()-e.at > window.Microseconds()
}

// itemEntry is the entry an item records.
func itemEntry(it *Item, batch int) entry {
	e := entry{fp: it.Fingerprint, batch: batch}
	if !it.Time.IsZero() {
		e.at, e.timed = it.Time.UnixMicro(), true
	}
	return e
}

// scanTime turns a scanned event_time into an entry's time.
func (e *entry) scanTime(ts pgtype.Timestamptz) {
	if ts.Valid {
		e.at, e.timed = ts.Time.UnixMicro(), true
	}
}

// Replace deletes the rows the lookup found expired (see Statuses), so that
// Record can write the New items' rows in their place; it must run in the
// lookup's transaction after Statuses and before Record. It costs a round
// trip only when some row expired, which retries within the window never
// make. Errors are wrapped with "replace expired event ids".
func (l *Lookup) Replace(ctx context.Context, q Execer) error {
	if len(l.expiredRows) == 0 {
		return nil
	}
	ids := make(pgarray.UUIDs, len(l.expiredRows))
	keys := make(pgarray.Int8s, len(l.expiredRows))
	for i, r := range l.expiredRows {
		ids[i], keys[i] = r.id, r.key
	}
	if _, err := q.Exec(ctx, `DELETE FROM processed_events p USING unnest($1::uuid[], $2::int8[]) AS u(event_id, key_hash)
WHERE p.event_id = u.event_id AND p.key_hash = u.key_hash`, ids, keys); err != nil {
		return fmt.Errorf("replace expired event ids: %w", err)
	}
	return nil
}

// Superseded reports whether item i (in the order given to QueueLookup) is
// New but a later item of the same lookup, of the same event, is New again
// (further than the window after it): both are applied, and only the later
// one's row is recorded.
func (l *Lookup) Superseded(i int) bool { return l.superseded[i] }
