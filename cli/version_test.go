package cli

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/heed-dev/heed/internal/buildinfo"
)

// TestVersion: `heed version` and `heed --version` print the build's
// version, revision and Go version (buildinfo, what heed_build_info
// exports), exit 0 and write nothing else. The stamped form is deploy
// TestDockerfileStampsVersion's.
func TestVersion(t *testing.T) {
	i := buildinfo.Get()
	want := fmt.Sprintf("heed %s (revision %s, %s)\n", i.Version, i.Revision, i.GoVersion)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var stdout, stderr bytes.Buffer
		if code := Run(t.Context(), ledgerDomains(), args, &stdout, &stderr); code != 0 || stdout.String() != want || stderr.Len() != 0 {
			t.Errorf("heed %v: exit %d, stdout %q, stderr %q; want 0, %q", args, code, stdout.String(), stderr.String(), want)
		}
	}
}
