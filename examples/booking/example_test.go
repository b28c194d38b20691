package booking_test

import (
	"fmt"

	"github.com/heed-dev/heed/examples/booking"
)

// The domain's defaults and events, as a binary built with
// cli.Main(booking.Domain()) runs them.
func ExampleDomain() {
	d := booking.Domain()
	fmt.Println(d.Name(), d.DefaultTopic(), d.DefaultGroup(), d.DefaultSchema(), d.Check())
	for _, e := range d.EventTypes() {
		fmt.Println(e)
	}
	// Output:
	// booking booking.events booking-applier booking <nil>
	// heed.examples.booking.v1.HoldConfirmed
	// heed.examples.booking.v1.HoldReleased
	// heed.examples.booking.v1.SeatsHeld
	// heed.examples.booking.v1.ShowCreated
}
