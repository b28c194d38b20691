// Package buildinfo says which heed a binary is: its version, the commit it
// was built from and the Go that built it, for `heed version` and the
// heed_build_info metric. A release build stamps the version (and, where the
// build has no .git, the revision) with the linker:
//
//	go build -ldflags "-X github.com/heed-dev/heed/internal/buildinfo.version=v1.2.3 -X github.com/heed-dev/heed/internal/buildinfo.revision=abc123" ./cmd/heed
//
// as the Dockerfile does from its VERSION and REVISION build arguments.
// Without them it reads what the go tool recorded (debug.ReadBuildInfo): the
// module version of a `go install ...@v1.2.3`, the VCS revision of a build in
// a git checkout.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Set by -ldflags -X; empty: read from the go tool's build information.
var (
	version  string
	revision string
)

// Info is a binary's identity.
type Info struct {
	Version   string // v1.2.3, or "(devel)" for an unstamped build from a checkout
	Revision  string // the commit, with "-dirty" if the tree had changes; "unknown" if not recorded
	GoVersion string // go1.26.0
}

// Get returns the running binary's Info.
func Get() Info {
	i := Info{Version: version, Revision: revision, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		if i.Version == "" {
			i.Version = bi.Main.Version
		}
		if i.Revision == "" {
			var dirty bool
			for _, s := range bi.Settings {
				switch s.Key {
				case "vcs.revision":
					i.Revision = s.Value
				case "vcs.modified":
					dirty = s.Value == "true"
				}
			}
			if i.Revision != "" && dirty {
				i.Revision += "-dirty"
			}
		}
	}
	if i.Version == "" {
		i.Version = "(devel)"
	}
	if i.Revision == "" {
		i.Revision = "unknown"
	}
	return i
}
