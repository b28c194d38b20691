package retention

import (
	"testing"
	"time"
)

// Failures in a row wait longer and longer, jittered, up to failWaitMax: a
// short --retention-interval and a database that keeps failing do not
// make Run spin.
func TestFailWait(t *testing.T) {
	for _, tc := range []struct {
		n    int
		base time.Duration
	}{{1, time.Second}, {2, 2 * time.Second}, {6, 32 * time.Second}, {7, failWaitMax}, {1000, failWaitMax}} {
		for range 50 {
			if d := failWait(tc.n); d < tc.base || d > tc.base+tc.base/4 {
				t.Fatalf("failWait(%d) = %v, want within [%v, %v]", tc.n, d, tc.base, tc.base+tc.base/4)
			}
		}
	}
}
