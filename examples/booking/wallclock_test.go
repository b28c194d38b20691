package booking_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/cli"
	"github.com/heed-dev/heed/examples/booking"
)

// TestWallClockBreakCaughtByRebuild runs the same commands through the
// domain and through a variant that reads the wall clock where it must read
// the record time (booking.WallClockDomain), each in booking dev in-process
// (cli.Run), then replays the topic with rebuild --verify: the domain's
// replay equals its live projection, the variant's does not, and the
// report names the rows that differ.
func TestWallClockBreakCaughtByRebuild(t *testing.T) {
	if testing.Short() {
		t.Skip("runs booking dev")
	}
	for _, tc := range []struct {
		name     string
		domain   *heed.Domain
		verified bool
	}{
		{"record time", booking.Domain(), true},
		{"wall clock", booking.WallClockDomain(), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDev(t, "") // no binary: the domain runs in-process
			runInProcess(t, tc.domain, "dev",
				"--data-dir", d.dataDir, "--listen", d.listen, "--broker-listen", d.broker,
				"--database-url", d.dbURL, "--metrics-listen", "", "--log-level", "warn")
			c := d.client().in(t)
			c.create("recital", "R1", "R2")
			c.hold("recital", "h1", time.Minute, "R1")
			tok := c.confirm("recital", "h1")
			if st, why := c.status("recital", "h1", tok); st != confirmed {
				t.Fatalf("h1 = %v (%q), want confirmed", st, why)
			}
			var out, errOut bytes.Buffer
			code := cli.Run(t.Context(), []*heed.Domain{tc.domain},
				[]string{"rebuild", "--verify", "--brokers", d.broker, "--database-url", d.dbURL, "--log-level", "warn"}, &out, &errOut)
			report := out.String() + errOut.String()
			switch {
			case tc.verified && (code != 0 || !strings.Contains(report, "verified: booking_rebuild equals booking")):
				t.Errorf("rebuild --verify: exit %d, want 0, verified\n%s", code, report)
			case !tc.verified && (code != 1 || !strings.Contains(report, "table holds") || strings.Contains(report, "verified:")):
				t.Errorf("rebuild --verify of the wall-clock variant: exit %d, want 1 naming table holds\n%s", code, report)
			}
			t.Logf("rebuild --verify:\n%s", report)
		})
	}
}

// runInProcess runs domain's binary with args through cli.Run until the test
// ends, once its stdout shows booking dev's server line. At the end it
// cancels the run and requires exit code 0.
func runInProcess(tb testing.TB, domain *heed.Domain, args ...string) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := &output{marker: serverLine, ready: make(chan struct{})}, &output{ready: make(chan struct{})}
	code := make(chan int, 1)
	go func() { code <- cli.Run(ctx, []*heed.Domain{domain}, args, stdout, stderr) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				tb.Errorf("%s exited with code %d after cancel, want 0\nstderr:\n%s", args[0], c, stderr)
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("%s did not return within 30s of cancel\nstderr:\n%s", args[0], stderr)
		}
	})
	select {
	case <-stdout.ready:
	case c := <-code:
		tb.Fatalf("%s exited with code %d before serving\nstdout:\n%s\nstderr:\n%s", args[0], c, stdout, stderr)
	case <-time.After(60 * time.Second):
		tb.Fatalf("%s did not serve within 60s\nstderr:\n%s", args[0], stderr)
	}
}
