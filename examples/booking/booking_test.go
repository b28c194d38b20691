package booking_test

import (
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/examples/booking"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	"github.com/heed-dev/heed/ingest"
)

const (
	held      = bookingv1.HoldStatus_HOLD_STATUS_HELD
	confirmed = bookingv1.HoldStatus_HOLD_STATUS_CONFIRMED
	released  = bookingv1.HoldStatus_HOLD_STATUS_RELEASED
	rejected  = bookingv1.HoldStatus_HOLD_STATUS_REJECTED
	expired   = bookingv1.HoldStatus_HOLD_STATUS_EXPIRED
)

// TestBooking drives the built booking binary as a user would: booking dev
// on a fresh database, commands and reads over Connect, a restart, holds
// that expire by record time, a record that can never apply, and the
// operator verbs (quarantine, rebuild --verify, audit) against the domain.
func TestBooking(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the booking binary")
	}
	bin := buildBooking(t)
	// The binary speaks of itself by its own name, and of the domain, not of
	// the ledger.
	help, err := exec.CommandContext(t.Context(), bin, "help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "Usage: booking VERB") || !strings.Contains(string(help), "serve the domain's commands") || strings.Contains(string(help), "bench") {
		t.Errorf("booking help: %v\n%s", err, help)
	}
	if out, err := exec.CommandContext(t.Context(), bin, "nope").CombinedOutput(); err == nil || !strings.Contains(string(out), "booking: unknown verb \"nope\"; run `booking help`") {
		t.Errorf("booking nope: %v\n%s", err, out)
	}
	d := newDev(t, bin)
	d.start(t)
	c := d.client()

	// The steps share the server's state: each runs only if those before it
	// passed.
	for _, step := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{"commands", func(t *testing.T) {
			c := c.in(t)
			tok := c.create("gala", "A1", "A2", "A3", "A4")
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A1", "A2", "A3", "A4"}) {
				t.Fatalf("free seats of a new show = %v, want A1-A4", got)
			}
			tok = c.hold("gala", "h1", 10*time.Minute, "A1", "A2")
			if st, why := c.status("gala", "h1", tok); st != held {
				t.Fatalf("hold h1 = %v (%s), want held", st, why)
			}
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A3", "A4"}) {
				t.Errorf("free seats with h1 held = %v, want A3 A4", got)
			}
			// A hold of a seat h1 holds is rejected and holds nothing.
			tok = c.hold("gala", "h2", 10*time.Minute, "A2", "A3")
			if st, why := c.status("gala", "h2", tok); st != rejected || !strings.Contains(why, "seat A2 is held until") {
				t.Errorf("hold h2 of A2, held by h1 = %v (%q), want rejected: seat A2 is held", st, why)
			}
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A3", "A4"}) {
				t.Errorf("free seats after the rejected h2 = %v, want A3 A4", got)
			}
			if st, why, _ := c.outcome("gala", "hold-gala-h2", tok); st != commandv1.CommandStatus_COMMAND_STATUS_REJECTED || !strings.Contains(why, "seat A2 is held") {
				t.Errorf("GetCommandResult of h2's HoldSeats = %v (%q), want rejected: seat A2 is held", st, why)
			}
			tok = c.confirm("gala", "h1")
			if st, why := c.status("gala", "h1", tok); st != confirmed {
				t.Errorf("h1 after its confirm = %v (%s), want confirmed", st, why)
			}
			if st, _, res := c.outcome("gala", "confirm-gala-h1", tok); st != commandv1.CommandStatus_COMMAND_STATUS_APPLIED || !slices.Equal(res.GetSeats(), []string{"A1", "A2"}) {
				t.Errorf("GetCommandResult of h1's confirm = %v, result %v; want applied, seats A1 A2 booked", st, res)
			}
			tok = c.hold("gala", "h3", 10*time.Minute, "A1")
			if st, why := c.status("gala", "h3", tok); st != rejected || !strings.Contains(why, "seat A1 is booked") {
				t.Errorf("hold h3 of booked A1 = %v (%q), want rejected: booked", st, why)
			}
			tok = c.hold("gala", "h4", 10*time.Minute, "A3")
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A4"}) {
				t.Errorf("free seats with h4 held = %v, want A4", got)
			}
			tok = c.release("gala", "h4")
			if st, why := c.status("gala", "h4", tok); st != released {
				t.Errorf("h4 after its release = %v (%s), want released", st, why)
			}
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A3", "A4"}) {
				t.Errorf("free seats after h4's release = %v, want A3 A4", got)
			}
			// A confirm of a released hold and one of an unknown hold are rejected
			// (seen through the seats they would have booked: none).
			c.confirm("gala", "h4")
			tok = c.confirm("gala", "nope")
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A3", "A4"}) {
				t.Errorf("free seats after confirms of a released and an unknown hold = %v, want A3 A4", got)
			}
			if st, _ := c.status("gala", "h4", tok); st != released {
				t.Errorf("h4 after a confirm of it = %v, want still released", st)
			}
			// A retried command (same request ID) is the same event, applied once.
			first, err := c.c.HoldSeats(t.Context(), connect.NewRequest(&bookingv1.HoldSeatsRequest{
				RequestId: "retry-me", ShowId: "gala", HoldId: "h5", Seats: []string{"A4"}, Ttl: durationpb.New(time.Minute)}))
			if err != nil {
				t.Fatal(err)
			}
			again, err := c.c.HoldSeats(t.Context(), connect.NewRequest(&bookingv1.HoldSeatsRequest{
				RequestId: "retry-me", ShowId: "gala", HoldId: "h5", Seats: []string{"A4"}, Ttl: durationpb.New(time.Minute)}))
			if err != nil {
				t.Fatal(err)
			}
			if again.Msg.GetEventId() != first.Msg.GetEventId() {
				t.Errorf("retried HoldSeats event ID %s, want the first's %s", again.Msg.GetEventId(), first.Msg.GetEventId())
			}
			if st, why := c.status("gala", "h5", again.Msg.GetConsistencyToken()); st != held {
				t.Errorf("h5, held by a command sent twice = %v (%q), want held (a second apply would reject it as a reused hold_id)", st, why)
			}
			// Shape errors never reach the topic.
			_, err = c.c.HoldSeats(t.Context(), connect.NewRequest(&bookingv1.HoldSeatsRequest{RequestId: "bad", ShowId: "gala", HoldId: "h6", Seats: []string{"A3"}}))
			if connect.CodeOf(err) != connect.CodeInvalidArgument || !strings.Contains(err.Error(), "ttl") {
				t.Errorf("HoldSeats without ttl: %v, want invalid_argument naming ttl", err)
			}
			_, err = c.c.ListFreeSeats(t.Context(), connect.NewRequest(&bookingv1.ListFreeSeatsRequest{ShowId: "no-such-show"}))
			if connect.CodeOf(err) != connect.CodeNotFound {
				t.Errorf("ListFreeSeats of an unknown show: %v, want not_found", err)
			}
		}},
		{"state survives a restart", func(t *testing.T) {
			c := c.in(t)
			d.proc.interrupt(t)
			d.start(t)
			if got := c.free("gala", ""); !slices.Equal(got, []string{"A3"}) {
				t.Errorf("free seats after a restart = %v, want A3 (A1 A2 booked by h1, A4 held by h5)", got)
			}
			if st, _ := c.status("gala", "h1", ""); st != confirmed {
				t.Errorf("h1 after a restart = %v, want confirmed", st)
			}
			tok := c.release("gala", "h5")
			if got := c.free("gala", tok); !slices.Equal(got, []string{"A3", "A4"}) {
				t.Errorf("free seats after h5's release, after the restart = %v, want A3 A4", got)
			}
		}},
		{"expiry by record time", func(t *testing.T) {
			c := c.in(t)
			// Records written by hand with their timestamps: what decides a hold's
			// expiry is the record time, whatever the wall clock says when the
			// applier reads them (a second later).
			c.create("matinee", "B1", "B2")
			c.create("soiree", "C1", "C2")
			base := time.Now()
			w := newWriter(t, d.broker)
			w.write("matinee", "m-hold", base, &bookingv1.SeatsHeld{ShowId: "matinee", HoldId: "m1", Seats: []string{"B1"}, Ttl: durationpb.New(10 * time.Minute)})
			tok := w.write("matinee", "m-confirm", base.Add(5*time.Minute), &bookingv1.HoldConfirmed{ShowId: "matinee", HoldId: "m1"})
			if st, why := c.status("matinee", "m1", tok); st != confirmed {
				t.Errorf("a hold confirmed 5m after it (ttl 10m) = %v (%q), want confirmed", st, why)
			}
			later := base.Add(5 * time.Minute) // a record time no earlier than any before it
			w.write("soiree", "s-hold", later, &bookingv1.SeatsHeld{ShowId: "soiree", HoldId: "s1", Seats: []string{"C1", "C2"}, Ttl: durationpb.New(10 * time.Minute)})
			tok = w.write("soiree", "s-confirm", later.Add(2*time.Hour), &bookingv1.HoldConfirmed{ShowId: "soiree", HoldId: "s1"})
			st, why := c.status("soiree", "s1", tok)
			if st != expired || !strings.Contains(why, "a confirm of it was recorded at") {
				t.Errorf("a hold confirmed 2h after it (ttl 10m) = %v (%q), want expired by its confirm's record time", st, why)
			}
			if st, why, _ := c.outcome("soiree", "s-confirm", tok); st != commandv1.CommandStatus_COMMAND_STATUS_REJECTED || !strings.Contains(why, "hold s1 expired at") {
				t.Errorf("GetCommandResult of the late confirm = %v (%q), want rejected: expired", st, why)
			}
			// The wall clock has not reached its expiry: only record time decided.
			if h, err := c.getHold("soiree", "s1", ""); err != nil || !h.GetExpiresAt().AsTime().After(time.Now()) {
				t.Errorf("s1 expires at %v (err %v), want after now: the test needs the wall clock before it", h.GetExpiresAt().AsTime(), err)
			}
			if got := c.free("soiree", tok); !slices.Equal(got, []string{"C1", "C2"}) {
				t.Errorf("free seats of soiree after its hold expired = %v, want C1 C2", got)
			}
		}},
		{"quarantine", func(t *testing.T) {
			c := c.in(t)
			c.create("q1", "D1", "D2")
			w := newWriter(t, d.broker)
			// A hold of no seats breaks SeatsHeld's protovalidate rules: it can
			// never apply, and the show's later events wait behind it.
			junk := w.record("q1", "junk-hold", time.Now(), &bookingv1.SeatsHeld{ShowId: "q1", HoldId: "junk"})
			w.produce(junk)
			tok := c.hold("q1", "later", 10*time.Minute, "D1")
			if _, err := c.getHold("q1", "later", tok); connect.CodeOf(err) != connect.CodeNotFound {
				t.Fatalf("GetHold of a hold behind a quarantined record: %v, want not_found (parked)", err)
			}
			if st, why, _ := c.outcome("q1", "hold-q1-later", tok); st != commandv1.CommandStatus_COMMAND_STATUS_PARKED {
				t.Errorf("GetCommandResult of the hold behind the junk = %v (%q), want parked", st, why)
			}
			if st, why, _ := c.outcome("q1", "junk-hold", tok); st != commandv1.CommandStatus_COMMAND_STATUS_QUARANTINED || !strings.Contains(why, "seats") {
				t.Errorf("GetCommandResult of the junk = %v (%q), want quarantined, naming seats", st, why)
			}
			code, out := d.run(t, "quarantine", "list")
			if code != 0 || !strings.Contains(out, "poison") || !strings.Contains(out, "parked") || !strings.Contains(out, "seats") {
				t.Errorf("booking quarantine list: exit %d\n%s\nwant the poison record (naming seats) and the parked hold", code, out)
			}
			// A record keyed by another show than its own breaks heed.Check.
			c.create("q2", "E1")
			stray := w.record("q2", "stray", time.Now(), &bookingv1.HoldConfirmed{ShowId: "q1", HoldId: "later"})
			w.produce(stray)
			c.free("q2", token(stray)) // once the stray record is quarantined
			code, out = d.run(t, "quarantine", "list", "--key", "q2")
			if code != 0 || !strings.Contains(out, `show_id "q1" is not the record key "q2"`) {
				t.Errorf("booking quarantine list --key q2: exit %d\n%s\nwant the record keyed by another show", code, out)
			}
			code, out = d.run(t, "quarantine", "drop", "--reason", "test: a hold of no seats",
				"--partition", fmt.Sprint(junk.Partition), "--offset", fmt.Sprint(junk.Offset))
			if code != 0 || !strings.Contains(out, "1 applied") {
				t.Fatalf("booking quarantine drop: exit %d\n%s", code, out)
			}
			if st, why := c.status("q1", "later", ""); st != held {
				t.Errorf("the parked hold after the drop = %v (%q), want held", st, why)
			}
			if st, why, _ := c.outcome("q1", "junk-hold", ""); st != commandv1.CommandStatus_COMMAND_STATUS_DROPPED || !strings.Contains(why, "a hold of no seats") {
				t.Errorf("GetCommandResult of the dropped junk = %v (%q), want dropped with the operator's reason", st, why)
			}
			code, out = d.run(t, "quarantine", "drop", "--reason", "test: keyed by another show",
				"--partition", fmt.Sprint(stray.Partition), "--offset", fmt.Sprint(stray.Offset))
			if code != 0 {
				t.Errorf("booking quarantine drop of the stray record: exit %d\n%s", code, out)
			}
		}},
		{"rebuild verify", func(t *testing.T) {
			code, out := d.run(t, "rebuild", "--verify")
			if code != 0 || !strings.Contains(out, "verified: booking_rebuild equals booking") {
				t.Errorf("booking rebuild --verify: exit %d\n%s", code, out)
			}
			for _, table := range []string{"shows", "seats", "holds", "hold_seats"} {
				if !strings.Contains(out, table) {
					t.Errorf("booking rebuild --verify compared no table %s:\n%s", table, out)
				}
			}
		}},
		{"audit", func(t *testing.T) {
			code, out := d.run(t, "audit")
			if code != 0 || !strings.Contains(out, "consistent") {
				t.Errorf("booking audit: exit %d\n%s", code, out)
			}
		}},
	} {
		if !t.Run(step.name, step.run) {
			return
		}
	}
}

// writer writes booking records around the server, as a producer of the
// domain's topic could: with heed's envelope and record, keyed by show, in
// the partition ingest would choose, with a timestamp of the test's.
type writer struct {
	tb testing.TB
	cl *kgo.Client
}

func newWriter(tb testing.TB, broker string) *writer {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.DefaultProduceTopic(booking.Domain().DefaultTopic()),
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cl.Close)
	return &writer{tb, cl}
}

// record is the record of event for show with request ID requestID and
// timestamp at.
func (w *writer) record(show, requestID string, at time.Time, event proto.Message) *kgo.Record {
	w.tb.Helper()
	env, err := ingest.NewEnvelopeIn(booking.Domain().IDs(), show, requestID, event)
	if err != nil {
		w.tb.Fatal(err)
	}
	r, err := ingest.NewRecord(env)
	if err != nil {
		w.tb.Fatal(err)
	}
	r.Timestamp = at
	return r
}

func (w *writer) produce(r *kgo.Record) {
	w.tb.Helper()
	if err := w.cl.ProduceSync(w.tb.Context(), r).FirstErr(); err != nil {
		w.tb.Fatalf("produce: %v", err)
	}
}

// write produces event and returns the consistency token of its record.
func (w *writer) write(show, requestID string, at time.Time, event proto.Message) string {
	w.tb.Helper()
	r := w.record(show, requestID, at, event)
	w.produce(r)
	return token(r)
}

func token(r *kgo.Record) string {
	return consistency.Token{Partition: r.Partition, Offset: r.Offset}.String()
}
