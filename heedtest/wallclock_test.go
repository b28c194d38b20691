package heedtest_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/heedtest"
)

// holdTTL is how long a hold lasts before a confirm comes too late.
const holdTTL = 500 * time.Millisecond

// holdsMigrations are the tables of the holds domains: a hold per key, and
// what became of it.
var holdsMigrations = fstest.MapFS{"00001_holds.sql": {Data: []byte(`-- +goose Up
CREATE TABLE holds (key text PRIMARY KEY, holder text NOT NULL, placed_at timestamptz NOT NULL);
CREATE TABLE outcomes (key text NOT NULL, holder text NOT NULL, outcome text NOT NULL);
-- +goose Down
DROP TABLE outcomes;
DROP TABLE holds;
`)}}

// holdClock is how a holds domain times its holds: placed is the time a
// hold stores, expired decides a confirm.
type holdClock struct {
	placed  func(hold heed.Event[*wrapperspb.StringValue]) time.Time
	expired func(placed time.Time, confirm heed.Event[*wrapperspb.BoolValue]) bool
}

// recordClock times holds by record time: the correct one.
var recordClock = holdClock{
	placed: func(ev heed.Event[*wrapperspb.StringValue]) time.Time { return ev.Time },
	expired: func(placed time.Time, ev heed.Event[*wrapperspb.BoolValue]) bool {
		return ev.Time.Sub(placed) > holdTTL
	},
}

// holdsDomain is a tiny domain in the simple form: a hold (a StringValue
// event, the holder) on a key lasts holdTTL; a confirm (a BoolValue event)
// within it books the key, a later one finds the hold expired. clock
// decides which.
func holdsDomain(name string, clock holdClock) *heed.Domain {
	d := heed.NewDomain(name, heed.Migrations(holdsMigrations))
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*wrapperspb.StringValue]) (heed.Result, error) {
		tag, err := tx.Exec(ctx, `INSERT INTO holds (key, holder, placed_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING`, ev.Key, ev.Msg.GetValue(), clock.placed(ev))
		if err != nil {
			return heed.Result{}, err
		}
		if tag.RowsAffected() == 0 {
			return heed.Rejected(ev.Key + " is held already"), nil
		}
		return heed.Applied(nil)
	})
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*wrapperspb.BoolValue]) (heed.Result, error) {
		var holder string
		var placed time.Time
		err := tx.QueryRow(ctx, `DELETE FROM holds WHERE key = $1 RETURNING holder, placed_at`, ev.Key).Scan(&holder, &placed)
		if errors.Is(err, pgx.ErrNoRows) {
			return heed.Rejected(ev.Key + " is not held"), nil
		}
		if err != nil {
			return heed.Result{}, err
		}
		outcome := "booked"
		if clock.expired(placed, ev) {
			outcome = "expired"
		}
		if _, err := tx.Exec(ctx, `INSERT INTO outcomes (key, holder, outcome) VALUES ($1, $2, $3)`, ev.Key, holder, outcome); err != nil {
			return heed.Result{}, err
		}
		if outcome == "expired" {
			return heed.Rejected("the hold on " + ev.Key + " expired"), nil
		}
		return heed.Applied(nil)
	})
	return d
}

// holdsStream holds a few keys, then confirms them, some within holdTTL of
// record time and some after it.
func holdsStream(r *rand.Rand) []heedtest.Command {
	var out []heedtest.Command
	var at time.Duration
	keys := 4
	for k := range keys {
		at += time.Duration(r.Int64N(int64(100 * time.Millisecond)))
		out = append(out, heedtest.Command{Key: fmt.Sprintf("seat%d", k), RequestID: fmt.Sprintf("hold%d", k), Event: wrapperspb.String(fmt.Sprintf("guest%d", k)), At: at})
	}
	for k := range keys {
		at += time.Duration(r.Int64N(int64(holdTTL)))
		out = append(out, heedtest.Command{Key: fmt.Sprintf("seat%d", k), RequestID: fmt.Sprintf("confirm%d", k), Event: wrapperspb.Bool(true), At: at})
	}
	return out
}

// recorder is a testing.TB that records what CheckReplay reports instead
// of failing the test; everything else goes to the real test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Error(args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprint(args...))
}

// TestCheckReplayCatchesWallClock: handlers that time holds by the wall
// clock (time.Now) instead of record time differ live, where pauses pass
// between a hold and its confirm, from the rebuild, which replays them at
// once. CheckReplay reports each, with the stream shrunk to a few commands.
func TestCheckReplayCatchesWallClock(t *testing.T) {
	var mu sync.Mutex
	appliedAt := map[string]time.Time{} // key → when its hold was applied, by the wall clock
	for _, tc := range []struct {
		name  string
		clock holdClock
		// diff is what the report must name; most is the longest shrunk
		// stream accepted.
		diff []string
		most int
	}{{
		// The common slip: a hold stamped and expired by the wall clock.
		// The stamp alone differs, in a hold not confirmed yet.
		name: "stamped",
		clock: holdClock{
			placed:  func(heed.Event[*wrapperspb.StringValue]) time.Time { return time.Now() },
			expired: func(placed time.Time, _ heed.Event[*wrapperspb.BoolValue]) bool { return time.Since(placed) > holdTTL },
		},
		diff: []string{"table holds"},
		most: 3,
	}, {
		// Subtler: the table holds record time, but the handler expires by
		// when it applied the hold, remembered in memory. Only the pauses
		// tell: the stream shrinks to the hold, its confirm and at most the
		// command whose pause came between.
		name: "remembered",
		clock: holdClock{
			placed: func(ev heed.Event[*wrapperspb.StringValue]) time.Time {
				mu.Lock()
				defer mu.Unlock()
				appliedAt[ev.Key] = time.Now()
				return ev.Time
			},
			expired: func(_ time.Time, ev heed.Event[*wrapperspb.BoolValue]) bool {
				mu.Lock()
				defer mu.Unlock()
				return time.Since(appliedAt[ev.Key]) > holdTTL
			},
		},
		diff: []string{"table outcomes", "expired", "booked"},
		most: 3,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{TB: t}
			f := heedtest.CheckReplay(rec, holdsDomain("wallclock_"+tc.name, tc.clock), holdsStream,
				heedtest.Streams(1), heedtest.Pauses(2, 2*holdTTL), heedtest.Shrinks(24))
			if f == nil || len(rec.errors) != 1 {
				t.Fatalf("CheckReplay reported %d errors and returned %v; want the wall-clock break reported once", len(rec.errors), f)
			}
			report := rec.errors[0]
			t.Logf("reported:\n%s", report)
			for _, want := range tc.diff {
				if !strings.Contains(report, want) {
					t.Errorf("the report does not say %q", want)
				}
			}
			if len(f.Stream) == 0 || len(f.Stream) > tc.most {
				t.Errorf("shrunk stream has %d commands, want 1 to %d", len(f.Stream), tc.most)
			}
			if f.Generated != 8 {
				t.Errorf("Failure.Generated = %d, want the 8 commands holdsStream draws", f.Generated)
			}
			if !strings.Contains(report, fmt.Sprintf("%s=%d", heedtest.SeedEnv, f.Seed)) || !strings.Contains(report, f.Stream[0].String()) {
				t.Errorf("the report does not give the seed to replay and the shrunk stream")
			}
		})
	}
}

// TestCheckReplayRecordTime: the same domain timing holds by record time
// (Event.Time) passes, pauses and all (its streams' confirms come within
// holdTTL of their hold and after it, in record time).
func TestCheckReplayRecordTime(t *testing.T) {
	d := holdsDomain("recordtime", recordClock)
	if f := heedtest.FindReplayFailure(t, d, holdsStream, heedtest.Streams(2), heedtest.Pauses(2, 2*holdTTL)); f != nil {
		t.Fatalf("a domain timing holds by record time failed: %v", f)
	}
}
