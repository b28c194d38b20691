// Command booking runs the seat booking example domain with every verb heed
// has: booking dev, serve, apply, migrate, rebuild, audit, quarantine, topic,
// token, healthcheck. See examples/booking/README.md.
package main

import (
	"github.com/heed-dev/heed/cli"
	"github.com/heed-dev/heed/examples/booking"
)

func main() { cli.Main(booking.Domain()) }
