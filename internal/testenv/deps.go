package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os/exec"
	"testing"

	"github.com/heed-dev/heed/devstack"
)

// Broker starts an embedded Kafka broker (kfake over real TCP on
// 127.0.0.1, random port) persisting to a fresh tb.TempDir, with
// partitions as the default partition count of auto-created topics (0:
// kfake's default, 10). It is closed in tb.Cleanup. Failing to start is a
// test failure.
func Broker(tb testing.TB, partitions int32) *devstack.Broker {
	tb.Helper()
	b, err := devstack.StartBroker(tb.Context(), devstack.BrokerConfig{
		Listen:     "127.0.0.1:0",
		DataDir:    tb.TempDir(),
		Partitions: partitions,
		Logger:     Logger(tb),
	})
	if err != nil {
		tb.Fatalf("testenv: start broker: %v", err)
	}
	tb.Cleanup(b.Close)
	return b
}

// Cluster starts a private PostgreSQL cluster (initdb + pg_ctl) in a fresh
// tb.TempDir on a free port, for tests that stop, restart or break the
// database. It is stopped in tb.Cleanup. Missing server binaries follow
// the Require policy; any other failure fails the test. Expect a few
// seconds for initdb.
func Cluster(tb testing.TB) *devstack.Cluster {
	tb.Helper()
	c, err := devstack.StartCluster(tb.Context(), tb.TempDir(), FreePort(tb), Logger(tb))
	if errors.Is(err, devstack.ErrNoPostgresBinaries) {
		Require(tb, "PostgreSQL server binaries", err)
	}
	if err != nil {
		tb.Fatalf("testenv: start private PostgreSQL cluster: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
// Another process may take it before the caller binds it. Failure is a
// test failure.
func FreePort(tb testing.TB) int {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("testenv: find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// LookPath returns the path of the executable name found in PATH; if
// there is none, Require policy applies (skip, or fail under CI).
func LookPath(tb testing.TB, name string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Require(tb, fmt.Sprintf("binary %q", name), fmt.Errorf("%w; install it or add its directory to PATH", err))
	}
	return p
}

// redacted returns a URL with its password masked, for messages.
func redacted(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}
