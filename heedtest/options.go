package heedtest

import (
	"time"

	"github.com/heed-dev/heed/retention"
)

// Option tunes CheckReplay.
type Option func(*options)

type options struct {
	streams      int
	partitions   int32
	restarts     int
	pauses       int
	maxPause     time.Duration
	shrinks      int
	window       time.Duration
	start        time.Time
	applyTimeout time.Duration
}

func defaultOptions() options {
	return options{
		streams:      5,
		partitions:   3,
		restarts:     3,
		pauses:       2,
		maxPause:     200 * time.Millisecond,
		shrinks:      32,
		window:       retention.DefaultRetention,
		start:        time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		applyTimeout: 30 * time.Second,
	}
}

// Streams sets how many generated streams CheckReplay checks (default 5).
// The environment variable HEEDTEST_STREAMS overrides it, to run more in a
// nightly job; HEEDTEST_SEED runs one.
func Streams(n int) Option { return func(o *options) { o.streams = max(n, 1) } }

// Partitions sets the topic's partition count (default 3). Keys spread over
// partitions by the hash heed's publisher uses.
func Partitions(n int) Option { return func(o *options) { o.partitions = int32(max(n, 1)) } }

// Restarts sets the most times the live applier is stopped and started
// again in one stream (default 3; each stream has between 1 and n, at
// random points, each with a new random batch size). Records written while
// it is down reach the next one in larger batches. 0: none.
func Restarts(n int) Option { return func(o *options) { o.restarts = max(n, 0) } }

// Pauses sets how many times the live run stops writing for a while in one
// stream (default 2), and the longest such pause (default 200ms): at a
// pause the live applier first applies everything written so far, then the
// run sleeps between longest/2 and longest. The rebuild replays the same
// records without pausing. A handler that reads the wall clock instead of
// Event.Time to compare durations shows up when pauses are longer than the
// durations it compares (for a hold that expires after a second,
// Pauses(2, 2*time.Second)). Pauses cost their wall time in every stream.
func Pauses(n int, longest time.Duration) Option {
	return func(o *options) { o.pauses, o.maxPause = max(n, 0), longest }
}

// Shrinks bounds how many runs CheckReplay spends shrinking a failing
// stream (default 32); 0 reports the stream as generated.
func Shrinks(n int) Option { return func(o *options) { o.shrinks = max(n, 0) } }

// DedupWindow sets the appliers' dedup window in record time (default
// heed's, retention.DefaultRetention, 7 days): a command repeated further
// apart than this is a new command. 0 is no window.
func DedupWindow(d time.Duration) Option { return func(o *options) { o.window = d } }

// StartTime sets the record time of a command with At 0 (default
// 2025-01-01T00:00:00Z, fixed, so that a seed reproduces the same records).
func StartTime(t time.Time) Option { return func(o *options) { o.start = t } }
