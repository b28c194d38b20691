package cli

import (
	"context"
	"io"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/ledger"
)

// run is Run for the ledger, the domain these tests drive.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return Run(ctx, []*heed.Domain{ledger.Domain()}, args, stdout, stderr)
}

// The ledger's defaults, which these tests' processes run with.
const (
	defaultTopic = "heed.ledger.events"
	defaultGroup = "heed-applier"
)

// ledgerDomains is the binary these tests drive: the ledger alone.
func ledgerDomains() []*heed.Domain { return []*heed.Domain{ledger.Domain()} }
