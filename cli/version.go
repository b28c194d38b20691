package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"fmt"
	"io"

	"github.com/heed-dev/heed/internal/buildinfo"
)

var versionVerb = verb{
	name:    "version",
	summary: "print the binary's version, the commit it was built from and its Go version (as /metrics' heed_build_info)",
	example: "heed version",
	new:     func(d *heed.Domain) command { return new(versionCmd) },
}

type versionCmd struct{}

func (*versionCmd) flags(*flag.FlagSet) {}

func (*versionCmd) run(_ context.Context, stdout, _ io.Writer) error {
	i := buildinfo.Get()
	_, err := fmt.Fprintf(stdout, "%s %s (revision %s, %s)\n", program, i.Version, i.Revision, i.GoVersion)
	return err
}
