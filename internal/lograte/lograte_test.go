package lograte

import (
	"testing"
	"time"
)

// The first line of a kind goes out, the next ones within the interval are
// held back and counted, and the first after it says how many were.
func TestAllow(t *testing.T) {
	l := New(10 * time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	type step struct {
		advance time.Duration
		kind    string
		ok      bool
		held    int
	}
	for i, s := range []step{
		{0, "a", true, 0},
		{time.Second, "a", false, 0},
		{time.Second, "a", false, 0},
		{0, "b", true, 0}, // kinds are counted apart
		{8 * time.Second, "a", true, 2},
		{time.Second, "a", false, 0},
		{time.Minute, "a", true, 1},
		{time.Minute, "a", true, 0},
	} {
		now = now.Add(s.advance)
		ok, held := l.Allow(s.kind)
		if ok != s.ok || held != s.held {
			t.Errorf("step %d (%s): Allow = %v, %d; want %v, %d", i, s.kind, ok, held, s.ok, s.held)
		}
	}
}

// Log passes the held-back count as "suppressed" and nothing when none was.
func TestLog(t *testing.T) {
	l := New(time.Hour)
	var lines [][]any
	log := func(_ string, args ...any) { lines = append(lines, args) }
	for range 5 {
		l.Log(log, "retrying", "partition", 3)
	}
	now := time.Now().Add(2 * time.Hour)
	l.now = func() time.Time { return now }
	l.Log(log, "retrying", "partition", 3)
	if len(lines) != 2 || len(lines[0]) != 2 || len(lines[1]) != 3 {
		t.Fatalf("lines = %v, want two, the second with suppressed=4", lines)
	}
	if got := lines[1][2]; got.(interface{ String() string }).String() != "suppressed=4" {
		t.Errorf("second line's last arg = %v, want suppressed=4", got)
	}
}
