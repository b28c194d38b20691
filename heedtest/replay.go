package heedtest

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed"
)

// Environment variables CheckReplay reads.
const (
	// SeedEnv names the variable that replays one stream: the seed a
	// failure reported. CheckReplay then checks that stream alone.
	SeedEnv = "HEEDTEST_SEED"
	// StreamsEnv names the variable that overrides Streams.
	StreamsEnv = "HEEDTEST_STREAMS"
)

// Failure is a stream whose live projection and rebuild differ, as
// CheckReplay reports it.
type Failure struct {
	// Seed is the stream's seed: HEEDTEST_SEED=Seed replays it.
	Seed uint64
	// Generated is how many commands the generator returned.
	Generated int
	// Stream is the failing stream, shrunk: what is left of the generated
	// one once every chunk and command whose removal kept a difference was
	// removed (within Shrinks runs).
	Stream []Command
	// Diff names the tables that differ and their first differing rows
	// ("only live: ..., only rebuilt: ...").
	Diff string
}

// Error describes the failure: the seed, the difference and the shrunk
// stream, one command a line.
func (f *Failure) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "heedtest: seed %d (%s=%d replays it): the live projection and its rebuild from the topic differ: %s\n", f.Seed, SeedEnv, f.Seed, f.Diff)
	fmt.Fprintf(&b, "shrunk stream (%d of %d commands):", len(f.Stream), f.Generated)
	for i, c := range f.Stream {
		fmt.Fprintf(&b, "\n  %d: %v", i, c)
	}
	return b.String()
}

// CheckReplay checks the property every heed domain must have: the topic is
// the truth. For each of several streams of commands drawn by gen, it
//
//  1. writes the stream to a fresh topic as heed's publisher writes events
//     (Command), with the record timestamps the stream gives;
//  2. applies it live with d's handlers, as heed apply does, through applier
//     restarts with random batch sizes and pauses at random points (Restarts,
//     Pauses), until every record is applied;
//  3. rebuilds the projection from the topic into a fresh schema, as heed
//     rebuild does, with another batch size, without pauses;
//  4. compares the two table by table: the domain's tables and heed's own
//     (processed events with their outcomes and results, quarantine,
//     positions), as heed rebuild --verify does.
//
// A handler that reads the wall clock, a random number, memory kept across
// events or anything but the event (its Time included) and the state earlier
// events wrote makes the two differ; so does a column that defaults to now()
// (store Event.Time instead). CheckReplay then shrinks the stream (removes
// chunks, then single commands, while the two still differ, within Shrinks
// runs) and reports the seed, the difference and the shrunk stream with
// tb.Errorf. It returns that failure too (nil when every stream passed).
//
// gen gets a generator seeded per stream: it must draw everything from r so
// that a seed reproduces its stream. Seeds are random per run and logged;
// HEEDTEST_SEED=n checks the stream of seed n alone, HEEDTEST_STREAMS=n
// checks n streams.
//
// CheckReplay needs a PostgreSQL server whose user may create databases:
// $HEED_TEST_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/postgres.
// Without one it skips tb, or fails it when the environment has CI=true. It
// creates a database of its own and drops it in tb.Cleanup, and runs an
// in-process Kafka broker (franz-go's kfake, over TCP on 127.0.0.1). A stream
// costs about a second plus its pauses. A stream whose run cannot complete
// (the live applier stuck on a handler's error for 30s, a database error)
// fails tb at once, listed; while shrinking, such a candidate counts as
// passing, and is logged. Call it from the test's goroutine.
func CheckReplay(tb testing.TB, d *heed.Domain, gen func(r *rand.Rand) []Command, opts ...Option) *Failure {
	tb.Helper()
	f := FindReplayFailure(tb, d, gen, opts...)
	if f != nil {
		tb.Errorf("%v", f)
	}
	return f
}

// FindReplayFailure is CheckReplay without the report: it returns the first
// failing stream, shrunk, or nil, and leaves tb passing either way (a run
// that cannot complete still fails it). For a test that a deliberate break
// of a domain is caught:
//
//	if f := heedtest.FindReplayFailure(t, broken, gen); f == nil {
//		t.Fatal("the handler reading the wall clock was not caught")
//	}
func FindReplayFailure(tb testing.TB, d *heed.Domain, gen func(r *rand.Rand) []Command, opts ...Option) *Failure {
	tb.Helper()
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	if err := d.Check(); err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	base, streams := uint64(time.Now().UnixNano()), o.streams
	if v := os.Getenv(StreamsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			tb.Fatalf("heedtest: %s=%q: want a positive number", StreamsEnv, v)
		}
		streams = n
	}
	if v := os.Getenv(SeedEnv); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			tb.Fatalf("heedtest: %s=%q: want a seed CheckReplay reported", SeedEnv, v)
		}
		base, streams = s, 1
	}
	r := newReplayer(tb, d, o)
	tb.Logf("heedtest: checking %d streams of domain %s, seeds %d to %d (%s=n replays one)", streams, d.Name(), base, base+uint64(streams)-1, SeedEnv)
	for i := range streams {
		seed := base + uint64(i)
		generated := gen(rand.New(rand.NewPCG(seed, 0)))
		stream := make([]indexed, len(generated))
		for j, c := range generated {
			if c.Event == nil && c.Raw == nil {
				tb.Fatalf("heedtest: seed %d: command %d (%v) has neither Event nor Raw", seed, j, c)
			}
			stream[j] = indexed{j, c}
		}
		s := newSchedule(seed, len(stream), o)
		diff := r.check(tb, seed, stream, s)
		if diff == "" {
			continue
		}
		stream, diff = r.shrink(tb, seed, stream, s, diff)
		f := &Failure{Seed: seed, Generated: len(generated), Diff: diff}
		for _, ic := range stream {
			f.Stream = append(f.Stream, ic.c)
		}
		return f
	}
	return nil
}

// check runs stream and returns its difference; a run that cannot complete
// fails tb.
func (r *replayer) check(tb testing.TB, seed uint64, stream []indexed, s schedule) string {
	tb.Helper()
	diff, err := r.differs(tb.Context(), stream, s)
	if err != nil {
		tb.Fatalf("heedtest: seed %d (%s=%d replays it): %v\nstream (%d commands):%s", seed, SeedEnv, seed, err, len(stream), listing(stream))
	}
	return diff
}

// listing is stream, one command a line.
func listing(stream []indexed) string {
	var b strings.Builder
	for _, ic := range stream {
		fmt.Fprintf(&b, "\n  %v", ic.c)
	}
	return b.String()
}

// shrink removes chunks of stream, halving their size down to single
// commands, while the live and rebuilt projections still differ, within
// the Shrinks budget, and returns the smallest failing stream and its
// difference.
func (r *replayer) shrink(tb testing.TB, seed uint64, stream []indexed, s schedule, diff string) ([]indexed, string) {
	tb.Helper()
	runs, generated := 0, len(stream)
	for size := len(stream) / 2; size >= 1 && runs < r.opts.shrinks; size /= 2 {
		for start := 0; start < len(stream) && runs < r.opts.shrinks; {
			end := min(start+size, len(stream))
			if end-start == len(stream) {
				break
			}
			cand := append(append([]indexed{}, stream[:start]...), stream[end:]...)
			runs++
			d, err := r.differs(tb.Context(), cand, s)
			if err != nil { // another failure than the one shrunk: keep the commands
				tb.Logf("heedtest: seed %d: shrinking: a candidate stream of %d commands did not complete (%v); keeping its commands", seed, len(cand), err)
			}
			if d != "" {
				stream, diff = cand, d
			} else {
				start = end
			}
		}
	}
	tb.Logf("heedtest: seed %d: shrunk the failing stream to %d of %d commands in %d runs", seed, len(stream), generated, runs)
	return stream, diff
}
