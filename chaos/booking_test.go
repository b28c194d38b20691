package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/heed-dev/heed/examples/booking"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	"github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1/bookingv1connect"
)

// The booking load: each worker's commands go to a window of bookingWindow
// shows that moves on by one show every bookingPace commands, so that the
// workers, going at about the same pace, contend for the same seats, and
// new shows keep coming with free seats.
const (
	bookingWindow = 6
	bookingPace   = 25
	bookingSeats  = 20 // a show's, labelled "1" to "20"
	bookingMine   = 20 // the holds a worker remembers, to confirm or release
)

// bookingTarget is the booking example, its own binary: shows created,
// seats held (by random hold IDs, some for seconds, so that they expire by
// record time), confirmed and released, checked against the outcomes: no
// seat booked by two holds, and the seats and holds as the applied
// commands leave them.
var bookingTarget = &target{
	name:   "booking",
	pkg:    "./examples/booking/cmd/booking",
	dom:    booking.Domain(),
	short:  20 * time.Second,
	pause:  10 * time.Millisecond, // about the ledger's rate: its commands are answered faster
	client: bookingClient,
	probe: func(server string) command {
		return command{requestID: "probe-" + server, key: "probe", kind: "create", seats: []string{"1"}}
	},
	worker: bookingWorker,
	check:  checkBooking,
}

// bookingWorker is worker w's commands: creates of the show entering its
// window (10%) or of any (2%, rejected once it exists), holds of 1-3 seats
// of a show by a random hold ID (48%; a few reuse one of the worker's hold
// IDs, rejected), confirms (25%) and releases (15%) of one of its holds,
// held or not.
func bookingWorker(w, workers int, rng *rand.Rand) func(i int) command {
	var mine []command // the worker's last holds
	return func(i int) command {
		first := i / bookingPace
		c := command{requestID: fmt.Sprintf("b%d-%d", w, i), key: fmt.Sprint("show-", first+rng.IntN(bookingWindow))}
		r := rng.IntN(100)
		switch {
		case r < 12:
			if r < 10 {
				c.key = fmt.Sprint("show-", first+bookingWindow-1)
			}
			c.kind = "create"
			for s := range bookingSeats {
				c.seats = append(c.seats, strconv.Itoa(s+1))
			}
		case r < 60 || len(mine) == 0:
			c.kind, c.hold, c.ttl = "hold", fmt.Sprintf("h%08x", rng.Uint32()), time.Hour
			if rng.IntN(5) == 0 {
				c.ttl = time.Duration(1+rng.IntN(3)) * time.Second
			}
			if r < 15 && len(mine) > 0 {
				m := mine[rng.IntN(len(mine))]
				c.key, c.hold = m.key, m.hold // a hold ID is used once in a show: rejected
			}
			for _, s := range rng.Perm(bookingSeats)[:1+rng.IntN(3)] {
				c.seats = append(c.seats, strconv.Itoa(s+1))
			}
			mine = append(mine, c)
			if len(mine) > bookingMine {
				mine = mine[1:]
			}
		default:
			m := mine[rng.IntN(len(mine))]
			c.key, c.hold, c.kind = m.key, m.hold, "confirm"
			if r >= 85 {
				c.kind = "release"
			}
		}
		return c
	}
}

// bookingClient sends booking commands to the server at addr over Connect.
func bookingClient(addr string) sender {
	c := bookingv1connect.NewBookingServiceClient(httpClient, "http://"+addr)
	return func(ctx context.Context, cmd command) error {
		var err error
		switch cmd.kind {
		case "create":
			_, err = c.CreateShow(ctx, connect.NewRequest(&bookingv1.CreateShowRequest{RequestId: cmd.requestID, ShowId: cmd.key, SeatLabels: cmd.seats}))
		case "hold":
			_, err = c.HoldSeats(ctx, connect.NewRequest(&bookingv1.HoldSeatsRequest{RequestId: cmd.requestID, ShowId: cmd.key, HoldId: cmd.hold, Seats: cmd.seats, Ttl: durationpb.New(cmd.ttl)}))
		case "confirm":
			_, err = c.ConfirmHold(ctx, connect.NewRequest(&bookingv1.ConfirmHoldRequest{RequestId: cmd.requestID, ShowId: cmd.key, HoldId: cmd.hold}))
		case "release":
			_, err = c.ReleaseHold(ctx, connect.NewRequest(&bookingv1.ReleaseHoldRequest{RequestId: cmd.requestID, ShowId: cmd.key, HoldId: cmd.hold}))
		default:
			err = fmt.Errorf("no booking command %q", cmd.kind)
		}
		return err
	}
}

// holdRef names a hold: hold IDs are a show's.
type holdRef struct{ show, hold string }

func (h holdRef) String() string { return h.show + "/" + h.hold }

// checkBooking checks the booking projection against the acknowledged
// commands' outcomes, which need no order between them: at most one create
// applied per show and one hold per hold ID; a hold applied only in a show
// created; a confirm or release applied only of a hold applied, and at most
// one of them per hold; no seat booked by two holds (the seats of every
// hold confirmed are disjoint); and the tables agree: the shows created,
// every booked seat booked by the hold whose confirm applied, every held
// seat held by a hold applied and neither confirmed nor released, every
// hold's status its commands' (a hold applied and neither confirmed nor
// released held or expired), and no hold expired before its expires_at by
// the record time of the event that found it so.
func checkBooking(t *testing.T, s *stack, acked []command, outcomes []outcome) string {
	t.Helper()
	created := map[string]bool{}
	held := map[holdRef][]string{} // applied holds' seats
	decided := map[holdRef]string{}
	for i, c := range acked {
		if outcomes[i] != applied {
			continue
		}
		ref := holdRef{c.key, c.hold}
		switch c.kind {
		case "create":
			if created[c.key] {
				t.Errorf("show %s: a second create (%s) applied", c.key, c.requestID)
			}
			created[c.key] = true
		case "hold":
			if _, ok := held[ref]; ok {
				t.Errorf("hold %s applied twice (the second %s): a hold ID is used once", ref, c.requestID)
			}
			held[ref] = c.seats
		case "confirm", "release":
			if d, ok := decided[ref]; ok {
				t.Errorf("hold %s: %s %s applied after a %s applied", ref, c.kind, c.requestID, d)
			}
			decided[ref] = c.kind
		}
	}
	bookedBy := map[string]holdRef{} // show/seat
	for ref, kind := range decided {
		seats, ok := held[ref]
		if !ok {
			t.Errorf("a %s of hold %s applied, but no hold of it applied", kind, ref)
		}
		if kind != "confirm" {
			continue
		}
		for _, seat := range seats {
			if other, ok := bookedBy[ref.show+"/"+seat]; ok {
				t.Errorf("seat %s of show %s booked by two holds: the confirms of %s and %s both applied", seat, ref.show, other.hold, ref.hold)
			}
			bookedBy[ref.show+"/"+seat] = ref
		}
	}
	for ref := range held {
		if !created[ref.show] {
			t.Errorf("hold %s applied, but no create of its show applied", ref)
		}
	}

	conn := s.connect(t)
	ctx := t.Context()
	rows, err := conn.Query(ctx, `SELECT show_id FROM `+s.table("shows")+` WHERE show_id <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	shows := map[string]bool{}
	for rows.Next() {
		var show string
		if err := rows.Scan(&show); err != nil {
			t.Fatal(err)
		}
		shows[show] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(shows, created) {
		t.Errorf("shows %v, want those whose create applied: %v", slices.Sorted(maps.Keys(shows)), slices.Sorted(maps.Keys(created)))
	}

	rows, err = conn.Query(ctx, `SELECT show_id, seat, state, coalesce(hold_id, '') FROM `+s.table("seats")+` WHERE state <> 'free' AND show_id <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	booked, heldSeats := map[string]holdRef{}, 0
	for rows.Next() {
		var show, seat, state, hold string
		if err := rows.Scan(&show, &seat, &state, &hold); err != nil {
			t.Fatal(err)
		}
		ref := holdRef{show, hold}
		switch state {
		case "booked":
			booked[show+"/"+seat] = ref
		case "held":
			heldSeats++
			if _, ok := held[ref]; !ok || decided[ref] != "" {
				t.Errorf("seat %s of show %s is held by %s, which is not a hold applied and undecided (applied: %v, decided: %q)", seat, show, hold, ok, decided[ref])
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(booked, bookedBy) {
		t.Errorf("%d seats booked, want the %d the applied confirms booked; booked %v, want %v", len(booked), len(bookedBy), booked, bookedBy)
	}

	rows, err = conn.Query(ctx, `SELECT show_id, hold_id, status FROM `+s.table("holds")+` WHERE show_id <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[string]int{}
	for rows.Next() {
		var show, hold, status string
		if err := rows.Scan(&show, &hold, &status); err != nil {
			t.Fatal(err)
		}
		statuses[status]++
		ref := holdRef{show, hold}
		_, ok := held[ref]
		want := map[string]string{"confirm": "confirmed", "release": "released"}[decided[ref]]
		switch {
		case status == "rejected":
			if ok {
				t.Errorf("hold %s is rejected, but a hold of it applied", ref)
			}
		case !ok:
			t.Errorf("hold %s is %s, but no hold of it applied", ref, status)
		case want != "" && status != want:
			t.Errorf("hold %s is %s, want %s", ref, status, want)
		case want == "" && status != "held" && status != "expired":
			t.Errorf("hold %s is %s, want held or expired: neither a confirm nor a release of it applied", ref, status)
		}
		delete(held, ref)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for ref := range held {
		t.Errorf("hold %s applied, but the holds table has no row of it", ref)
	}
	var early int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM `+s.table("holds")+` WHERE status = 'expired' AND expires_at > decided_at`).Scan(&early); err != nil || early != 0 {
		t.Errorf("%d holds expired before their expires_at, by the record time of the event that found them so (%v); want none", early, err)
	}
	return fmt.Sprintf("%d shows, %d seats booked, %d held, holds %v", len(shows), len(booked), heldSeats, statuses)
}
