package cli

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestDevFailedStartLeavesNoDirectory: a heed dev whose database refuses the
// login says so (not "does not answer") and leaves no empty data directory,
// and no broker data, behind; a data directory that existed stays.
func TestDevFailedStartLeavesNoDirectory(t *testing.T) {
	u, err := url.Parse(testenv.PostgresURL(t))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("heedtest_no_such_role")
	for _, existed := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "new", ".heed")
		if existed {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		a := freeDevAddrs(t)
		args := []string{"dev", "--data-dir", dir, "--listen", a.listen, "--broker-listen", a.broker, "--metrics-listen", "", "--database-url", u.String()}
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		var stdout, stderr bytes.Buffer
		code := run(ctx, args, &stdout, &stderr)
		cancel()
		if code != 1 || !strings.Contains(stderr.String(), `refused the login of role "heedtest_no_such_role"`) || strings.Contains(stderr.String(), "does not answer") {
			t.Errorf("existed=%v: exit %d, stderr:\n%s\nwant 1 and the refused login named", existed, code, stderr.String())
		}
		_, err := os.Stat(dir)
		switch {
		case !existed && !errors.Is(err, fs.ErrNotExist):
			entries, _ := os.ReadDir(dir)
			t.Errorf("the data directory the failed run created is still there (%v), with %d entries", err, len(entries))
		case existed && err != nil:
			t.Errorf("the data directory that existed before is gone: %v", err)
		case existed:
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Errorf("the failed run left %d entries in the existing data directory: %v", len(entries), entries)
			}
		}
	}
}
