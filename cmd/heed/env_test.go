package main

import (
	"os"
	"testing"
)

// TestMain turns the metrics server off for every heed this package's tests
// run, in process or as a process (the environment is inherited), unless
// the environment says otherwise: tests run many serve, apply and dev at
// once, and the default addresses would collide. Tests of metrics pass
// --metrics-listen, which wins over the environment.
func TestMain(m *testing.M) {
	if _, ok := os.LookupEnv("HEED_METRICS_LISTEN"); !ok {
		os.Setenv("HEED_METRICS_LISTEN", "")
	}
	os.Exit(m.Run())
}
