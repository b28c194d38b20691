// Package testenv provides test helpers for heed's external dependencies:
// PostgreSQL databases, embedded Kafka brokers, private PostgreSQL clusters,
// free ports and binaries. Every helper takes a testing.TB, marks itself a
// helper and registers its cleanup with tb.Cleanup.
//
// Missing dependencies follow one policy (Require): the test is skipped
// locally and fails under CI (CI=true), with the same message, so that a
// CI run can never pass by silently skipping.
package testenv

import (
	"os"
	"testing"
)

// Require enforces the missing-dependency policy: if err is non-nil, the
// test stops with a message naming what is missing and why. Under CI
// (environment variable CI equals "true") that is tb.Fatalf; otherwise
// tb.Skipf. With a nil err it does nothing. Call it from the test's own
// goroutine, like tb.Fatalf.
func Require(tb testing.TB, what string, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if InCI() {
		tb.Fatalf("%s unavailable: %v (CI=true, so this fails instead of skipping)", what, err)
	}
	tb.Skipf("%s unavailable: %v (skipping; under CI=true this fails)", what, err)
}

// InCI reports whether the environment variable CI equals "true".
func InCI() bool {
	return os.Getenv("CI") == "true"
}

// RunWithoutMetrics runs a package's tests with the metrics server of every
// heed they start, in process or as a process (the environment is
// inherited), turned off unless the environment says otherwise: tests run
// many serve, apply and dev at once, and the default metrics addresses would
// collide. Tests of metrics pass --metrics-listen, which wins. Call it from
// TestMain.
func RunWithoutMetrics(m *testing.M) {
	if _, ok := os.LookupEnv("HEED_METRICS_LISTEN"); !ok {
		os.Setenv("HEED_METRICS_LISTEN", "")
	}
	os.Exit(m.Run())
}
