package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kerr"
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
	{"broker-produce-errors", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		n := 1 + rng.IntN(10)
		codes := []*kerr.Error{kerr.NotLeaderForPartition, kerr.NotEnoughReplicas, kerr.RequestTimedOut}
		e := codes[rng.IntN(len(codes))]
		answerWithError(s, []int16{kmsg.Produce.Int16()}, n, e)
		return fmt.Sprintf("the broker answers the next %d produce requests %s, writing nothing", n, e.Message), nil
	}},
	{"broker-fetch-errors", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		n := 1 + rng.IntN(20)
		codes := []*kerr.Error{kerr.NotLeaderForPartition, kerr.KafkaStorageError, kerr.UnknownServerError}
		e := codes[rng.IntN(len(codes))]
		answerWithError(s, []int16{kmsg.Fetch.Int16()}, n, e)
		return fmt.Sprintf("the broker answers the next %d fetch requests %s for every partition", n, e.Message), nil
	}},
	{"coordinator-move", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		// One broker cannot move its coordinator elsewhere; the members see
		// what a move shows them: NOT_COORDINATOR on their group requests
		// until they look the coordinator up again.
		n := 1 + rng.IntN(10)
		answerWithError(s, groupKeys, n, kerr.NotCoordinator)
		return fmt.Sprintf("the group coordinator moves: the next %d group requests get NOT_COORDINATOR", n), nil
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
	{"rebuild-swap", func(ctx context.Context, s *stack, rng *rand.Rand) (string, error) {
		// heed rebuild --verify --swap under the load, killed at a failpoint
		// mid-replay half the time (the next run resumes), with an applier
		// SIGKILLed while it runs; then --drop-old.
		level := "warn"
		if logDir != "" {
			level = "info"
		}
		args := []string{"rebuild", "--brokers", s.brokerAddr, "--database-url", s.dbURL, "--batch-records", "500", "--hold-timeout", "30s", "--log-level", level}
		var did []string
		if rng.IntN(2) == 0 {
			at := 1 + rng.IntN(5)
			if out, err := runHeed(ctx, s.bin, []string{fmt.Sprintf("HEED_FAILPOINTS=apply/after-commit=crash@%d", at)}, args...); err == nil {
				return "", fmt.Errorf("a rebuild armed to crash at batch %d finished instead:\n%s", at, out)
			}
			s.log.count("rebuild crashed at apply/after-commit")
			did = append(did, fmt.Sprintf("rebuild SIGKILLed at its batch %d", at))
		}
		victim := pick(rng, s.applies)
		delay := time.Duration(rng.IntN(1500)) * time.Millisecond
		killed := time.AfterFunc(delay, func() { s.kill(victim) })
		started := time.Now()
		s.swap.Lock()
		defer s.swap.Unlock()
		out, err := runHeed(ctx, s.bin, nil, append(args, "--verify", "--swap")...)
		killed.Stop()
		s.keep("rebuild", fmt.Sprintf("rebuild --verify --swap, started at %.2fs, took %v: %v\n%s", started.Sub(s.log.start).Seconds(), time.Since(started), err, out))
		if err != nil {
			return "", fmt.Errorf("%s rebuild --verify --swap: %v\n%s", s.tg.name, err, out)
		}
		if out, err := runHeed(ctx, s.bin, nil, "rebuild", "--database-url", s.dbURL, "--drop-old"); err != nil {
			return "", fmt.Errorf("%s rebuild --drop-old: %v\n%s", s.tg.name, err, out)
		}
		did = append(did, fmt.Sprintf("rebuilt, verified and swapped in %v with %s SIGKILLed %v in; old schema dropped", time.Since(started).Round(100*time.Millisecond), victim.name, delay))
		return strings.Join(did, "; "), nil
	}},
	{"rebalance-churn", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		sl := pick(rng, s.applies)
		s.terminate(sl)
		return sl.name + " stopped by SIGTERM (a dynamic member leaves the group; revived later)", nil
	}},
}

// runHeed runs a binary (heed, booking) with extra environment and returns its
// combined output; bounded by two minutes.
func runHeed(ctx context.Context, bin string, env []string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
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

// groupKeys are the requests a group member sends its coordinator.
var groupKeys = []int16{
	kmsg.JoinGroup.Int16(), kmsg.SyncGroup.Int16(), kmsg.Heartbeat.Int16(),
	kmsg.OffsetCommit.Int16(), kmsg.OffsetFetch.Int16(), kmsg.ConsumerGroupHeartbeat.Int16(),
}

// answerWithError makes the broker answer the next n requests with one of
// keys by e, as a broker that cannot serve them right now does, without
// handling them.
func answerWithError(s *stack, keys []int16, n int, e *kerr.Error) {
	var mu sync.Mutex
	left := n
	for _, key := range keys {
		s.broker.Cluster().ControlKey(key, func(req kmsg.Request) (kmsg.Response, error, bool) {
			mu.Lock()
			defer mu.Unlock()
			if left <= 0 {
				return nil, nil, false
			}
			left--
			s.broker.Cluster().KeepControl()
			return errorResponse(req, e.Code), nil, true
		})
	}
}

// errorResponse is the answer to req with code on everything it names.
func errorResponse(req kmsg.Request, code int16) kmsg.Response {
	switch req := req.(type) {
	case *kmsg.ProduceRequest:
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp
	case *kmsg.FetchRequest:
		resp := req.ResponseKind().(*kmsg.FetchResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewFetchResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, code
				rp.HighWatermark, rp.LastStableOffset, rp.LogStartOffset = -1, -1, -1
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp
	case *kmsg.OffsetCommitRequest:
		resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
		for _, t := range req.Topics {
			rt := kmsg.NewOffsetCommitResponseTopic()
			rt.Topic, rt.TopicID = t.Topic, t.TopicID
			for _, p := range t.Partitions {
				rp := kmsg.NewOffsetCommitResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp
	case *kmsg.OffsetFetchRequest:
		resp := req.ResponseKind().(*kmsg.OffsetFetchResponse)
		resp.ErrorCode = code
		for _, g := range req.Groups {
			rg := kmsg.NewOffsetFetchResponseGroup()
			rg.Group, rg.ErrorCode = g.Group, code
			resp.Groups = append(resp.Groups, rg)
		}
		return resp
	case *kmsg.JoinGroupRequest:
		resp := req.ResponseKind().(*kmsg.JoinGroupResponse)
		resp.ErrorCode, resp.Generation = code, -1
		return resp
	case *kmsg.SyncGroupRequest:
		resp := req.ResponseKind().(*kmsg.SyncGroupResponse)
		resp.ErrorCode = code
		return resp
	case *kmsg.HeartbeatRequest:
		resp := req.ResponseKind().(*kmsg.HeartbeatResponse)
		resp.ErrorCode = code
		return resp
	case *kmsg.ConsumerGroupHeartbeatRequest:
		resp := req.ResponseKind().(*kmsg.ConsumerGroupHeartbeatResponse)
		resp.ErrorCode = code
		return resp
	}
	panic(fmt.Sprintf("chaos: no error response for %T", req))
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

// has says whether a fault of kind was added.
func (l *schedule) has(kind string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.counts[kind] > 0
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
