package booking_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/heed-dev/heed/examples/booking"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	"github.com/heed-dev/heed/heedtest"
)

// bookingStream is a random stream of booking commands over three shows of
// six seats: holds of one to three random seats for 10 to 40 minutes,
// confirms and releases of random holds (some unknown), retries of earlier
// commands, and junk, with the record clock moving a few minutes per command
// and sometimes past every hold's expiry, so that holds expire, are taken
// over and are confirmed too late.
func bookingStream(r *rand.Rand) []heedtest.Command {
	shows := []string{"s0", "s1", "s2"}
	var (
		stream []heedtest.Command
		at     time.Duration
		holds  = map[string][]string{}
	)
	add := func(show string, c heedtest.Command) {
		c.Key, c.At = show, at
		if c.RequestID == "" {
			c.RequestID = fmt.Sprintf("r%d", len(stream))
		}
		stream = append(stream, c)
	}
	for _, s := range shows {
		add(s, heedtest.Command{Event: &bookingv1.ShowCreated{ShowId: s, Seats: []string{"1", "2", "3", "4", "5", "6"}}})
	}
	for i := range 40 {
		show := shows[r.IntN(len(shows))]
		switch {
		case r.IntN(100) < 40:
			hold := fmt.Sprintf("h%d", i)
			seats := map[string]bool{}
			for range 1 + r.IntN(3) {
				seats[fmt.Sprint(1+r.IntN(6))] = true
			}
			var list []string
			for s := range seats {
				list = append(list, s)
			}
			holds[show] = append(holds[show], hold)
			ttl := time.Duration(10+r.IntN(31)) * time.Minute
			add(show, heedtest.Command{Event: &bookingv1.SeatsHeld{ShowId: show, HoldId: hold, Seats: sortedSeats(list), Ttl: durationpb.New(ttl)}})
		default:
			hold := "h-unknown"
			if hs := holds[show]; len(hs) > 0 && r.IntN(5) > 0 {
				hold = hs[r.IntN(len(hs))]
			}
			switch r.IntN(10) {
			case 0:
				if len(stream) > 0 {
					c := stream[r.IntN(len(stream))] // a client's retry: a duplicate
					add(c.Key, heedtest.Command{RequestID: c.RequestID, Event: c.Event, Raw: c.Raw})
				}
			case 1:
				add(show, heedtest.Command{Raw: []byte("junk")}) // quarantined; the show's next events park
			case 2, 3, 4:
				add(show, heedtest.Command{Event: &bookingv1.HoldReleased{ShowId: show, HoldId: hold}})
			default:
				add(show, heedtest.Command{Event: &bookingv1.HoldConfirmed{ShowId: show, HoldId: hold}})
			}
		}
		if r.IntN(8) == 0 {
			at += time.Hour // past every hold's expiry
		} else {
			at += time.Duration(r.IntN(8)) * time.Minute
		}
	}
	return stream
}

func sortedSeats(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// The booking domain replays: the tables built live, through applier
// restarts, random batch sizes and pauses, equal a rebuild's, whatever the
// stream of holds, expiries, confirms, releases, retries and junk.
func TestReplay(t *testing.T) {
	if testing.Short() {
		t.Skip("applies streams live and rebuilds them")
	}
	heedtest.CheckReplay(t, booking.Domain(), bookingStream, heedtest.Streams(3), heedtest.Partitions(2))
}

// The kit catches the wall-clock variant (holds and confirms reading
// time.Now()), shrunk to a few commands.
func TestReplayCatchesWallClock(t *testing.T) {
	if testing.Short() {
		t.Skip("applies streams live and rebuilds them")
	}
	f := heedtest.FindReplayFailure(t, booking.WallClockDomain(), bookingStream, heedtest.Streams(3), heedtest.Partitions(2))
	if f == nil {
		t.Fatal("the booking domain reading the wall clock passed CheckReplay: the kit missed the break")
	}
	if len(f.Stream) > 5 || !strings.Contains(f.Diff, "holds") {
		t.Errorf("the failure was not shrunk to the hold, or does not name the holds table:\n%v", f)
	}
	t.Logf("caught, as expected:\n%v", f)
}
