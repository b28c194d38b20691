package testenv

import (
	"testing"
	"time"
)

// Eventually polls cond every 20ms until it returns "" (done) or timeout
// passes, then fails tb with cond's last complaint.
func Eventually(tb testing.TB, timeout time.Duration, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("after %v: %s", timeout, msg)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
