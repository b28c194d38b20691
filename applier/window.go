package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The dedup window (Config.DedupWindow) and record time. Whether an event is
// a duplicate is decided by the topic alone (see package dedup's window): an
// event is a duplicate of a processed one only within the window, measured in
// record time. A record's time is its partition's effective time at it: the
// latest record timestamp of the partition up to it, in log order, which a
// producer's clock going backwards cannot move back. The applier keeps it
// with the applied position (applied_positions.record_time, moved by the
// batch's compare-and-set), so that a resumed applier and a rebuild compute
// the same, and stores it with a quarantined or parked record, so that a
// re-drive or a drop decides with the record's own time.

// ErrWindowChanged is in the error of an applier (or a re-drive) whose dedup
// window is not the one its projection was built with: decisions would differ
// from those already made.
var ErrWindowChanged = errors.New("the dedup window differs from the one the projection was built with")

// bindWindowSQL records the dedup window ($1, in microseconds) unless one is
// recorded, and reads the one recorded, as the statement's snapshot sees it.
const bindWindowSQL = `WITH ins AS (INSERT INTO heed_dedup_window (window_us) VALUES ($1) ON CONFLICT (singleton) DO NOTHING RETURNING window_us)
SELECT window_us FROM ins UNION ALL SELECT window_us FROM heed_dedup_window LIMIT 1`

// BindWindow records window as the projection's dedup window if it has none
// yet, and returns an error wrapping ErrWindowChanged, naming both, if it has
// another. Other errors are the database's, wrapped. Binders racing to
// record the first window (an applier's start and its first assignment, two
// appliers) all get the one that won.
func BindWindow(ctx context.Context, q Querier, window time.Duration) error {
	var us int64
	err := q.QueryRow(ctx, bindWindowSQL, window.Microseconds()).Scan(&us)
	if errors.Is(err, pgx.ErrNoRows) {
		// A concurrent binder inserted the row first: this INSERT waited
		// for it to commit and did nothing, and the statement's snapshot,
		// taken before that commit, does not see the row. A new statement
		// does.
		err = q.QueryRow(ctx, `SELECT window_us FROM heed_dedup_window`).Scan(&us)
	}
	if err != nil {
		return fmt.Errorf("record the dedup window: %w", err)
	}
	if got := time.Duration(us) * time.Microsecond; got != window {
		return fmt.Errorf("%w: the projection's is %s, this one %s", ErrWindowChanged, windowText(got), windowText(window))
	}
	return nil
}

// RecordedWindow reads the projection's dedup window; ok is false when none
// is recorded yet (or the projection's schema predates it).
func RecordedWindow(ctx context.Context, q Querier) (window time.Duration, ok bool, err error) {
	var us int64
	err = q.QueryRow(ctx, `SELECT window_us FROM heed_dedup_window`).Scan(&us)
	var pgErr *pgconn.PgError
	if errors.Is(err, pgx.ErrNoRows) || errors.As(err, &pgErr) && pgErr.Code == "42P01" { // undefined_table
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read the dedup window: %w", err)
	}
	return time.Duration(us) * time.Microsecond, true, nil
}

// windowText is a window for people: 0 is none.
func windowText(w time.Duration) string {
	if w == 0 {
		return "none (0: processed events kept forever)"
	}
	return w.String()
}

// recordTimes sets each decoded record's effective time, from the partition's
// at the batch's first record (from: the last applied record's), and returns
// the last one's.
func recordTimes(decs []decoded, from time.Time) time.Time {
	t := from
	for i := range decs {
		if ts := decs[i].rec.Timestamp; ts.After(t) {
			t = ts
		}
		decs[i].at = t
	}
	return t
}
