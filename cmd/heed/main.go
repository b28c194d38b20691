// Command heed is the reference ledger's binary: heed's every verb for the
// ledger domain. `heed dev` runs everything in one process; `heed help`
// lists the verbs. Another domain's binary is the same line with its own
// domain (examples/booking/cmd/booking).
package main

import (
	"github.com/heed-dev/heed/cli"
	"github.com/heed-dev/heed/ledger"
)

func main() { cli.Main(ledger.Domain()) }
