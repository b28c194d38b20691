package booking

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heed-dev/heed"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	"github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1/bookingv1connect"
)

// service implements BookingService: each command publishes its event in one
// call; the queries read the projection, after waiting for a consistency
// token if given. Requests reach it validated by their protovalidate rules
// (heed's handler options). It is safe for concurrent use.
type service struct {
	env *heed.Env
	now func() time.Time
}

var _ bookingv1connect.BookingServiceHandler = (*service)(nil)

// newService returns the service publishing through env.Publisher and
// reading env.Pool.
func newService(env *heed.Env) *service { return &service{env: env, now: time.Now} }

// CreateShow publishes ShowCreated, with seat_count's seats labelled "1" to
// "N".
func (s *service) CreateShow(ctx context.Context, req *connect.Request[bookingv1.CreateShowRequest]) (*connect.Response[bookingv1.CreateShowResponse], error) {
	m := req.Msg
	seats := m.GetSeatLabels()
	if n := int(m.GetSeatCount()); n > 0 {
		seats = make([]string, n)
		for i := range seats {
			seats[i] = strconv.Itoa(i + 1)
		}
	}
	id, token, err := s.env.Publisher.Publish(ctx, m.GetShowId(), m.GetRequestId(), &bookingv1.ShowCreated{ShowId: m.GetShowId(), Seats: seats})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&bookingv1.CreateShowResponse{EventId: id, ConsistencyToken: token}), nil
}

// HoldSeats publishes SeatsHeld.
func (s *service) HoldSeats(ctx context.Context, req *connect.Request[bookingv1.HoldSeatsRequest]) (*connect.Response[bookingv1.HoldSeatsResponse], error) {
	m := req.Msg
	id, token, err := s.env.Publisher.Publish(ctx, m.GetShowId(), m.GetRequestId(),
		&bookingv1.SeatsHeld{ShowId: m.GetShowId(), HoldId: m.GetHoldId(), Seats: m.GetSeats(), Ttl: m.GetTtl()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&bookingv1.HoldSeatsResponse{EventId: id, ConsistencyToken: token}), nil
}

// ConfirmHold publishes HoldConfirmed.
func (s *service) ConfirmHold(ctx context.Context, req *connect.Request[bookingv1.ConfirmHoldRequest]) (*connect.Response[bookingv1.ConfirmHoldResponse], error) {
	m := req.Msg
	id, token, err := s.env.Publisher.Publish(ctx, m.GetShowId(), m.GetRequestId(), &bookingv1.HoldConfirmed{ShowId: m.GetShowId(), HoldId: m.GetHoldId()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&bookingv1.ConfirmHoldResponse{EventId: id, ConsistencyToken: token}), nil
}

// ReleaseHold publishes HoldReleased.
func (s *service) ReleaseHold(ctx context.Context, req *connect.Request[bookingv1.ReleaseHoldRequest]) (*connect.Response[bookingv1.ReleaseHoldResponse], error) {
	m := req.Msg
	id, token, err := s.env.Publisher.Publish(ctx, m.GetShowId(), m.GetRequestId(), &bookingv1.HoldReleased{ShowId: m.GetShowId(), HoldId: m.GetHoldId()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&bookingv1.ReleaseHoldResponse{EventId: id, ConsistencyToken: token}), nil
}

// ListFreeSeats lists a show's free seats in the show's order. Unlike the
// applier it reads the wall clock: a seat held by a hold whose expires_at
// has passed by the server's clock (as_of) is listed free, since a HoldSeats
// sent after this read is recorded at as_of or later and will find it free
// (on one clock; a broker's clock behind the server's delays that). Errors:
// not_found for an unknown show; Await's for the token.
func (s *service) ListFreeSeats(ctx context.Context, req *connect.Request[bookingv1.ListFreeSeatsRequest]) (*connect.Response[bookingv1.ListFreeSeatsResponse], error) {
	show := req.Msg.GetShowId()
	if err := s.env.Await(ctx, req.Msg.GetConsistencyToken()); err != nil {
		return nil, err
	}
	asOf := s.now()
	rows, err := s.env.Pool.Query(ctx, `SELECT seat FROM seats
		WHERE show_id = $1 AND (state = 'free' OR (state = 'held' AND held_until <= $2))
		ORDER BY position`, show, asOf)
	if err != nil {
		return nil, heed.ReadError(err)
	}
	seats, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, heed.ReadError(err)
	}
	if len(seats) == 0 {
		var exists bool
		if err := s.env.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM shows WHERE show_id = $1)`, show).Scan(&exists); err != nil {
			return nil, heed.ReadError(err)
		}
		if !exists {
			return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("show %s not found (not created, or its CreateShow is not applied yet: pass its consistency_token)", show))
		}
	}
	return connect.NewResponse(&bookingv1.ListFreeSeatsResponse{ShowId: show, Seats: seats, AsOf: timestamppb.New(asOf)}), nil
}

// holdStatus maps the holds table's status to the API's.
var holdStatus = map[string]bookingv1.HoldStatus{
	"held":      bookingv1.HoldStatus_HOLD_STATUS_HELD,
	"confirmed": bookingv1.HoldStatus_HOLD_STATUS_CONFIRMED,
	"released":  bookingv1.HoldStatus_HOLD_STATUS_RELEASED,
	"rejected":  bookingv1.HoldStatus_HOLD_STATUS_REJECTED,
	"expired":   bookingv1.HoldStatus_HOLD_STATUS_EXPIRED,
}

// GetHold reads a hold, after waiting for the consistency token if given: a
// HoldSeats' own token reads its hold, held or rejected with the reason
// (read-your-writes). A hold held by the applier's record and whose
// expires_at has passed by the server's clock reads as expired: a confirm
// sent now would be refused. Errors: not_found for a hold the show does not
// have; Await's for the token.
func (s *service) GetHold(ctx context.Context, req *connect.Request[bookingv1.GetHoldRequest]) (*connect.Response[bookingv1.GetHoldResponse], error) {
	show, id := req.Msg.GetShowId(), req.Msg.GetHoldId()
	if err := s.env.Await(ctx, req.Msg.GetConsistencyToken()); err != nil {
		return nil, err
	}
	var (
		status, reason  string
		heldAt, expires time.Time
	)
	err := s.env.Pool.QueryRow(ctx, `SELECT status, held_at, expires_at, reason FROM holds WHERE show_id = $1 AND hold_id = $2`, show, id).
		Scan(&status, &heldAt, &expires, &reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("no hold %s in show %s (not asked for, or its HoldSeats is not applied yet: pass its consistency_token)", id, show))
	}
	if err != nil {
		return nil, heed.ReadError(err)
	}
	rows, err := s.env.Pool.Query(ctx, `SELECT seat FROM hold_seats WHERE show_id = $1 AND hold_id = $2 ORDER BY position`, show, id)
	if err != nil {
		return nil, heed.ReadError(err)
	}
	seats, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, heed.ReadError(err)
	}
	h := &bookingv1.Hold{
		ShowId: show, HoldId: id, Status: holdStatus[status], Seats: seats, Reason: reason,
		HeldAt: timestamppb.New(heldAt), Ttl: durationpb.New(expires.Sub(heldAt)),
	}
	if status != "rejected" {
		h.ExpiresAt = timestamppb.New(expires)
	}
	if now := s.now(); status == "held" && !expires.After(now) {
		h.Status = bookingv1.HoldStatus_HOLD_STATUS_EXPIRED
		h.Reason = fmt.Sprintf("expired at %s by the server's clock (read at %s): a confirm recorded after it is rejected", stamp(expires), stamp(now))
	}
	return connect.NewResponse(&bookingv1.GetHoldResponse{Hold: h}), nil
}
