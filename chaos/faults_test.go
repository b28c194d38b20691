package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A fault is one thing that goes wrong during a run. inject does it and
// returns what it did, for the schedule; the stack brings what it stopped
// back itself (revive) unless the fault says when.
type fault struct {
	name   string
	inject func(ctx context.Context, s *stack, rng *rand.Rand) (string, error)
}

// faults are the kinds a run draws from. Later work adds its own (a rebuild
// swap, an operator's redrive) by appending here.
var faults = []fault{
	{"kill-apply", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.applies)
		s.kill(sl)
		return sl.name + " SIGKILLed", nil
	}},
	{"kill-serve", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.serves)
		s.kill(sl)
		return sl.name + " SIGKILLed mid-load", nil
	}},
	{"failpoint-apply", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.applies)
		points := []string{"apply/after-lookup", "apply/before-commit", "apply/after-commit", "apply/revoke"}
		point := points[rng.IntN(len(points))]
		at := 1 + rng.IntN(5)
		s.kill(sl)
		sl.mu.Lock()
		sl.env = []string{fmt.Sprintf("HEED_FAILPOINTS=%s=crash@%d", point, at)}
		sl.mu.Unlock()
		s.start(sl)
		s.log.count("armed at " + point)
		return fmt.Sprintf("%s restarted armed to crash at %s (hit %d)", sl.name, point, at), nil
	}},
	{"failpoint-serve", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.serves)
		at := 1 + rng.IntN(50)
		s.kill(sl)
		sl.mu.Lock()
		sl.env = []string{fmt.Sprintf("HEED_FAILPOINTS=ingest/after-produce=crash@%d", at)}
		sl.mu.Unlock()
		s.start(sl)
		return fmt.Sprintf("%s restarted armed to crash after a produce (hit %d)", sl.name, at), nil
	}},
	{"terminate-backends", func(ctx context.Context, s *stack, _ *rand.Rand) (string, error) {
		conn, err := pgx.Connect(ctx, s.dbURL)
		if err != nil {
			return "", err
		}
		defer conn.Close(ctx)
		var n int
		err = conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'`).Scan(&n)
		return fmt.Sprintf("pg_terminate_backend of %d connections", n), err
	}},
	{"crash-postgres", func(ctx context.Context, s *stack, rng *rand.Rand) (string, error) {
		if err := s.pg.Crash(ctx); err != nil {
			return "", err
		}
		down := time.Duration(500+rng.IntN(1500)) * time.Millisecond
		time.Sleep(down)
		return fmt.Sprintf("Postgres crashed (immediate stop), down %v", down), s.pg.Start(ctx)
	}},
	{"broker-drop-produce", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		n := 1 + rng.IntN(5)
		dropRequests(s, kmsg.Produce.Int16(), n)
		return fmt.Sprintf("the broker drops the connection of the next %d produce requests", n), nil
	}},
	{"broker-drop-fetch", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		n := 1 + rng.IntN(5)
		dropRequests(s, kmsg.Fetch.Int16(), n)
		return fmt.Sprintf("the broker drops the connection of the next %d fetch requests", n), nil
	}},
	{"broker-slow", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		n, d := 20+rng.IntN(30), time.Duration(50+rng.IntN(150))*time.Millisecond
		var left sync.Mutex
		count := n
		s.broker.Cluster().Control(func(kmsg.Request) (kmsg.Response, error, bool) {
			left.Lock()
			defer left.Unlock()
			if count > 0 {
				count--
				s.broker.Cluster().KeepControl()
				time.Sleep(d)
			}
			return nil, nil, false
		})
		return fmt.Sprintf("the broker answers the next %d requests %v late", n, d), nil
	}},
	{"rebalance-churn", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.applies)
		s.terminate(sl)
		return sl.name + " stopped by SIGTERM (a dynamic member leaves the group; revived later)", nil
	}},
}

// errInjected closes the connection of a request a fault drops.
var errInjected = errors.New("chaos: connection dropped")

// dropRequests makes the broker close the connection of the next n requests
// with key.
func dropRequests(s *stack, key int16, n int) {
	var mu sync.Mutex
	left := n
	s.broker.Cluster().ControlKey(key, func(kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if left <= 0 {
			return nil, nil, false
		}
		left--
		if left > 0 {
			s.broker.Cluster().KeepControl()
		}
		return nil, errInjected, true
	})
}

// schedule records what a run did and when, for its report.
type schedule struct {
	mu     sync.Mutex
	start  time.Time
	seed   uint64
	lines  []string
	counts map[string]int
}

func newSchedule(seed uint64) *schedule {
	return &schedule{start: time.Now(), seed: seed, counts: map[string]int{}}
}

func (l *schedule) add(kind, what string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[kind]++
	l.lines = append(l.lines, fmt.Sprintf("%7.2fs %-20s %s", time.Since(l.start).Seconds(), kind, what))
}

// count counts key without a line in the schedule.
func (l *schedule) count(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counts[key]++
}

func (l *schedule) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprintf("seed %d (replay with HEED_CHAOS_SEED=%d)\n%s", l.seed, l.seed, strings.Join(l.lines, "\n"))
}
