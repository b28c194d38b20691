// Package booking is heed's second example domain, seat booking, written
// against heed's public API only (packages heed and cli; its tests also use
// ingest to write records by hand): a show's seats are held for a while, then
// confirmed (booked) or released, and a hold expires by record time, never
// by the wall clock.
//
// Each show is an aggregate: its events are keyed by show_id, so they apply
// in the order they were written, and applying one reads and writes that
// show's rows only. Commands (BookingService's CreateShow, HoldSeats,
// ConfirmHold, ReleaseHold) are validated for shape by their protovalidate
// rules and published as one event each; the applier decides them in heed's
// simple form (heed.On: SQL inside heed's transaction), writing rows across
// the tables shows, seats, holds and hold_seats. Queries (ListFreeSeats,
// GetHold) read them after waiting for a consistency token.
//
// Its binary is cmd/booking:
//
//	func main() { cli.Main(booking.Domain()) }
package booking

import (
	"embed"
	"fmt"
	"io/fs"

	"github.com/heed-dev/heed"
	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	"github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1/bookingv1connect"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations of the domain's tables.
var Migrations, _ = fs.Sub(migrations, "migrations")

// Domain is seat booking as a heed domain, with heed's defaults for a domain
// named booking: topic booking.events, consumer group booking-applier,
// schema booking. Every event read from the topic is checked against its
// protovalidate rules and must be keyed by its show_id.
func Domain() *heed.Domain { return domain(holdSeats, confirmHold) }

// domain is the domain with hold and confirm applying SeatsHeld and
// HoldConfirmed (the tests' wall-clock variant swaps them).
func domain(hold heed.ApplyFunc[*bookingv1.SeatsHeld], confirm heed.ApplyFunc[*bookingv1.HoldConfirmed]) *heed.Domain {
	d := heed.NewDomain("booking",
		heed.Migrations(Migrations),
		heed.Results(&bookingv1.CommandResult{}),
		heed.Banner(banner))
	heed.On(d, createShow, heed.Check(func(key string, m *bookingv1.ShowCreated) error {
		return keyIsShow(key, m.GetShowId())
	}))
	heed.On(d, hold, heed.Check(func(key string, m *bookingv1.SeatsHeld) error {
		return keyIsShow(key, m.GetShowId())
	}))
	heed.On(d, confirm, heed.Check(func(key string, m *bookingv1.HoldConfirmed) error {
		return keyIsShow(key, m.GetShowId())
	}))
	heed.On(d, releaseHold, heed.Check(func(key string, m *bookingv1.HoldReleased) error {
		return keyIsShow(key, m.GetShowId())
	}))
	heed.Serve(d, func(env *heed.Env) ([]heed.Service, error) {
		path, h := bookingv1connect.NewBookingServiceHandler(newService(env), env.Options...)
		return []heed.Service{{Name: bookingv1connect.BookingServiceName, Path: path, Handler: h}}, nil
	})
	return d
}

// keyIsShow is every event's rule beyond its protovalidate ones: it is keyed
// by its show, so that it applies in the show's order.
func keyIsShow(key, showID string) error {
	if key != showID {
		return fmt.Errorf("show_id %q is not the record key %q", showID, key)
	}
	return nil
}

// banner is what booking dev prints: commands to paste.
func banner(addr string) string {
	return fmt.Sprintf(`Try (show banner-demo):
  grpcurl -plaintext -d '{"request_id":"banner-show","show_id":"banner-demo","seat_count":4}' %[1]s heed.examples.booking.v1.BookingService/CreateShow
  grpcurl -plaintext -d '{"show_id":"banner-demo"}' %[1]s heed.examples.booking.v1.BookingService/ListFreeSeats
`, addr)
}
