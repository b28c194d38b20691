package booking

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heed-dev/heed"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
)

// The handlers below are heed's simple form: each applies one event inside
// heed's transaction, reading and writing only its show's rows, and reads
// one clock, the event's record time (ev.Time). A refusal is a result
// (heed.Rejected); an error rolls the batch back and heed retries it.

// recordTime is ev.Time as Postgres stores it (microseconds), so that what a
// handler compares and returns is what a later event reads back.
func recordTime(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

// createShow creates a show and its free seats, in the order given.
func createShow(ctx context.Context, tx heed.Tx, ev heed.Event[*bookingv1.ShowCreated]) (heed.Result, error) {
	m := ev.Msg
	tag, err := tx.Exec(ctx, `INSERT INTO shows (show_id, seat_count, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		m.GetShowId(), len(m.GetSeats()), recordTime(ev.Time))
	if err != nil {
		return heed.Result{}, fmt.Errorf("insert show: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return heed.Rejected(fmt.Sprintf("show %s exists already", m.GetShowId())), nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO seats (show_id, seat, position, state)
		SELECT $1, s.seat, s.position, 'free' FROM unnest($2::text[]) WITH ORDINALITY AS s(seat, position)`,
		m.GetShowId(), m.GetSeats()); err != nil {
		return heed.Result{}, fmt.Errorf("insert seats: %w", err)
	}
	return heed.Applied(&bookingv1.CommandResult{Seats: m.GetSeats()})
}

// seat is a seat's row as holdSeats reads it.
type seat struct {
	label, state, holdID string
	heldUntil            time.Time
}

// holdSeats holds seats until the event's record time plus its ttl, if each
// exists and is free, or held by a hold that expired by the record time
// (which is marked expired, and its seats freed). A hold_id not used before
// in the show leaves a hold row, held or rejected with the reason.
func holdSeats(ctx context.Context, tx heed.Tx, ev heed.Event[*bookingv1.SeatsHeld]) (heed.Result, error) {
	m := ev.Msg
	show, hold, now := m.GetShowId(), m.GetHoldId(), recordTime(ev.Time)
	expires := recordTime(now.Add(m.GetTtl().AsDuration()))
	var used bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM holds WHERE show_id = $1 AND hold_id = $2)`, show, hold).Scan(&used); err != nil {
		return heed.Result{}, fmt.Errorf("read hold: %w", err)
	}
	if used {
		return heed.Rejected(fmt.Sprintf("hold %s exists in show %s already: a hold_id is used once", hold, show)), nil
	}
	reason, expired, err := checkSeats(ctx, tx, show, m.GetSeats(), now)
	if err != nil {
		return heed.Result{}, err
	}
	status := "held"
	if reason != "" {
		status = "rejected"
	}
	if _, err := tx.Exec(ctx, `INSERT INTO holds (show_id, hold_id, status, held_at, expires_at, reason) VALUES ($1, $2, $3, $4, $5, $6)`,
		show, hold, status, now, expires, reason); err != nil {
		return heed.Result{}, fmt.Errorf("insert hold: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO hold_seats (show_id, hold_id, position, seat)
		SELECT $1, $2, s.position, s.seat FROM unnest($3::text[]) WITH ORDINALITY AS s(seat, position)`,
		show, hold, m.GetSeats()); err != nil {
		return heed.Result{}, fmt.Errorf("insert hold seats: %w", err)
	}
	if reason != "" {
		return heed.Rejected(reason), nil
	}
	for _, old := range expired {
		if err := expire(ctx, tx, show, old.holdID, old.heldUntil, now, fmt.Sprintf("its seats were held again by hold %s, recorded at %s", hold, stamp(now))); err != nil {
			return heed.Result{}, err
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE seats SET state = 'held', hold_id = $3, held_until = $4 WHERE show_id = $1 AND seat = ANY($2)`,
		show, m.GetSeats(), hold, expires); err != nil {
		return heed.Result{}, fmt.Errorf("hold seats: %w", err)
	}
	return heed.Applied(&bookingv1.CommandResult{Seats: m.GetSeats(), ExpiresAt: timestamppb.New(expires)})
}

// checkSeats says why labels cannot be held at now ("" if they can), and
// which holds of them expired by now (a seat of each).
func checkSeats(ctx context.Context, tx heed.Tx, show string, labels []string, now time.Time) (reason string, expired []seat, err error) {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT FROM shows WHERE show_id = $1)`, show).Scan(&exists); err != nil {
		return "", nil, fmt.Errorf("read show: %w", err)
	}
	if !exists {
		return fmt.Sprintf("no show %s", show), nil, nil
	}
	rows, err := tx.Query(ctx, `SELECT seat, state, coalesce(hold_id, ''), coalesce(held_until, 'epoch') FROM seats WHERE show_id = $1 AND seat = ANY($2)`, show, labels)
	if err != nil {
		return "", nil, fmt.Errorf("read seats: %w", err)
	}
	found := make(map[string]seat, len(labels))
	var s seat
	if _, err := pgx.ForEachRow(rows, []any{&s.label, &s.state, &s.holdID, &s.heldUntil}, func() error {
		found[s.label] = s
		return nil
	}); err != nil {
		return "", nil, fmt.Errorf("read seats: %w", err)
	}
	var problems []string
	seen := map[string]bool{}
	for _, l := range labels { // in the order asked: the reason is deterministic
		s, ok := found[l]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("no seat %s", l))
		case s.state == "booked":
			problems = append(problems, fmt.Sprintf("seat %s is booked", l))
		case s.state == "held" && s.heldUntil.After(now):
			problems = append(problems, fmt.Sprintf("seat %s is held until %s", l, stamp(s.heldUntil)))
		case s.state == "held" && !seen[s.holdID]:
			seen[s.holdID] = true
			expired = append(expired, s)
		}
	}
	if len(problems) > 0 {
		return strings.Join(problems, "; "), nil, nil
	}
	return "", expired, nil
}

// expire marks a held hold, which expired at expires, expired as found by
// an event recorded at now, and frees the seats it still holds.
func expire(ctx context.Context, tx heed.Tx, show, hold string, expires, now time.Time, why string) error {
	if _, err := tx.Exec(ctx, `UPDATE holds SET status = 'expired', decided_at = $3, reason = $4 WHERE show_id = $1 AND hold_id = $2 AND status = 'held'`,
		show, hold, now, fmt.Sprintf("expired at %s: %s", stamp(expires), why)); err != nil {
		return fmt.Errorf("expire hold %s: %w", hold, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE seats SET state = 'free', hold_id = NULL, held_until = NULL WHERE show_id = $1 AND hold_id = $2 AND state = 'held'`, show, hold); err != nil {
		return fmt.Errorf("free the seats of hold %s: %w", hold, err)
	}
	return nil
}

// errNotHeld is decide's refusal: the reason a confirm or release of a hold
// that is not held is rejected.
type errNotHeld struct{ reason string }

func (e errNotHeld) Error() string { return e.reason }

// held checks that hold is held at now, for a confirm or release (verb): a
// hold that expired by now is marked so, and refused like an unknown,
// released, confirmed or rejected one, with an errNotHeld.
func held(ctx context.Context, tx heed.Tx, show, hold, verb string, now time.Time) error {
	var status, reason string
	var expires time.Time
	err := tx.QueryRow(ctx, `SELECT status, expires_at, reason FROM holds WHERE show_id = $1 AND hold_id = $2`, show, hold).Scan(&status, &expires, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotHeld{fmt.Sprintf("no hold %s in show %s", hold, show)}
	}
	if err != nil {
		return fmt.Errorf("read hold: %w", err)
	}
	switch status {
	case "held":
		if expires.After(now) {
			return nil
		}
		if err := expire(ctx, tx, show, hold, expires, now, fmt.Sprintf("a %s of it was recorded at %s", verb, stamp(now))); err != nil {
			return err
		}
		return errNotHeld{fmt.Sprintf("hold %s expired at %s (its record time plus its ttl); this %s was recorded at %s", hold, stamp(expires), verb, stamp(now))}
	case "rejected":
		return errNotHeld{fmt.Sprintf("hold %s was rejected: %s", hold, reason)}
	case "expired":
		return errNotHeld{fmt.Sprintf("hold %s %s", hold, reason)}
	}
	return errNotHeld{fmt.Sprintf("hold %s is %s already", hold, status)}
}

// confirmHold books the seats of a hold that is held at the event's record
// time.
func confirmHold(ctx context.Context, tx heed.Tx, ev heed.Event[*bookingv1.HoldConfirmed]) (heed.Result, error) {
	return decide(ctx, tx, ev.Msg.GetShowId(), ev.Msg.GetHoldId(), "confirm", "confirmed", "booked", ev.Time)
}

// releaseHold frees the seats of a hold that is held at the event's record
// time.
func releaseHold(ctx context.Context, tx heed.Tx, ev heed.Event[*bookingv1.HoldReleased]) (heed.Result, error) {
	return decide(ctx, tx, ev.Msg.GetShowId(), ev.Msg.GetHoldId(), "release", "released", "free", ev.Time)
}

// decide ends a held hold with status, moving its seats to seatState; the
// result lists them in the show's order.
func decide(ctx context.Context, tx heed.Tx, show, hold, verb, status, seatState string, at time.Time) (heed.Result, error) {
	now := recordTime(at)
	var refused errNotHeld
	if err := held(ctx, tx, show, hold, verb, now); errors.As(err, &refused) {
		return heed.Rejected(refused.reason), nil
	} else if err != nil {
		return heed.Result{}, err
	}
	rows, err := tx.Query(ctx, `WITH moved AS (
			UPDATE seats SET state = $3,
				hold_id = CASE WHEN $3 = 'free' THEN NULL ELSE hold_id END, held_until = NULL
			WHERE show_id = $1 AND hold_id = $2 AND state = 'held'
			RETURNING seat, position)
		SELECT seat FROM moved ORDER BY position`, show, hold, seatState)
	if err != nil {
		return heed.Result{}, fmt.Errorf("%s seats: %w", verb, err)
	}
	seats, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return heed.Result{}, fmt.Errorf("%s seats: %w", verb, err)
	}
	if _, err := tx.Exec(ctx, `UPDATE holds SET status = $3, decided_at = $4 WHERE show_id = $1 AND hold_id = $2`, show, hold, status, now); err != nil {
		return heed.Result{}, fmt.Errorf("%s hold: %w", verb, err)
	}
	return heed.Applied(&bookingv1.CommandResult{Seats: seats})
}

// stamp formats a record time for reasons: RFC 3339 in UTC, microseconds.
func stamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000Z") }
