//go:build failpoints

package failpoint

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Enabled reports whether this binary was built with failpoints.
const Enabled = true

type point struct {
	crash bool
	fire  bool
	stall time.Duration // 0: for good
	at    int64
	hits  atomic.Int64
}

var points = mustParse(os.Getenv("HEED_FAILPOINTS"))

// Hit crashes or stalls the process if the point name is armed and due.
func Hit(name string) {
	p := points[name]
	if p == nil || p.fire || p.hits.Add(1) < p.at {
		return
	}
	if p.crash {
		fmt.Fprintf(os.Stderr, "failpoint %s: crashing (SIGKILL)\n", name)
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: stalling\n", name)
	if p.stall == 0 {
		select {}
	}
	time.Sleep(p.stall)
}

// Fire reports whether the point name is armed with fire and this is its
// due hit; true once.
func Fire(name string) bool {
	p := points[name]
	if p == nil || !p.fire || p.hits.Add(1) != p.at {
		return false
	}
	fmt.Fprintf(os.Stderr, "failpoint %s: firing\n", name)
	return true
}

func mustParse(spec string) map[string]*point {
	ps, err := parse(spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "HEED_FAILPOINTS=%q: %v\n", spec, err)
		os.Exit(2)
	}
	return ps
}

func parse(spec string) (map[string]*point, error) {
	ps := map[string]*point{}
	for _, item := range strings.Split(spec, ",") {
		if item = strings.TrimSpace(item); item == "" {
			continue
		}
		name, action, ok := strings.Cut(item, "=")
		if !ok || !slices.Contains(Points, name) {
			return nil, fmt.Errorf("%q: want NAME=ACTION with NAME one of %s", item, strings.Join(Points, ", "))
		}
		p := &point{at: 1}
		if a, n, ok := strings.Cut(action, "@"); ok {
			at, err := strconv.ParseInt(n, 10, 64)
			if err != nil || at < 1 {
				return nil, fmt.Errorf("%q: the hit after @ must be a number ≥ 1", item)
			}
			action, p.at = a, at
		}
		switch {
		case action == "crash":
			p.crash = true
		case action == "fire":
			p.fire = true
		case action == "stall":
		case strings.HasPrefix(action, "stall:"):
			d, err := time.ParseDuration(strings.TrimPrefix(action, "stall:"))
			if err != nil || d <= 0 {
				return nil, fmt.Errorf("%q: stall:DUR needs a positive Go duration", item)
			}
			p.stall = d
		default:
			return nil, fmt.Errorf("%q: the action must be crash, stall, stall:DUR or fire, optionally @N", item)
		}
		ps[name] = p
	}
	return ps, nil
}
