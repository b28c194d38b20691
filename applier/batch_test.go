package applier_test

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
)

// Every record is applied once: new events change the counters, a redelivered
// one is skipped, a reused request ID with other content and a record that can
// never apply are quarantined, and the position reaches the topic's end.
func TestApplyOnce(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStack(t)
			c := new(counter)
			a1, b1 := record(t, "a", "a1", 1), record(t, "b", "b1", 10)
			s.produce(t, a1, b1, record(t, "a", "a2", 2))
			s.produce(t, a1, record(t, "b", "b1", 99), record(t, "a", "bad", 0), record(t, "b", "b2", 20))
			app := s.start(t, hc.make(c), 0)
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 4 || st.Duplicates != 1 || st.Conflicts != 1 || st.Quarantined != 1 {
					return fmt.Sprintf("stats %+v, want 4 applied, 1 duplicate, 1 conflict, 1 quarantined", st)
				}
				return ""
			})
			// Quarantined: the conflict and the poison record.
			s.checkState(t, state{counters: map[string]int64{"a": 3, "b": 30}, processed: 4, quarantined: 2, position: 7})
			checkPath(t, hc.name, c)
		})
	}
}

// checkPath checks that the applier drove the handler the way its form asks.
func checkPath(t *testing.T, form string, c *counter) {
	t.Helper()
	applies, queues := c.applies.Load(), c.queues.Load()
	switch {
	case form == "batched" && (applies != 0 || queues == 0):
		t.Errorf("BatchHandler: Apply called %d times, Loaded.Queue %d; want only Queue", applies, queues)
	case form == "plain" && applies == 0:
		t.Errorf("plain Handler: Apply never called")
	}
}

// A batch of new events costs two pipelined batches for a BatchHandler, and
// the same plus Apply's own statements for a plain Handler: no dedup lookup
// while no duplicate came, and the processed-event rows go with the commit.
// A batch holding a duplicate fails on the processed-event key and is applied
// again at once with the lookup, which brings the stored fingerprints: two
// batches and a ROLLBACK more. A batch of hundreds of new events records them
// by COPY instead, in round trips of its own.
func TestRoundTrips(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStack(t)
			c := new(counter)
			var recs []*kgo.Record
			for i := range 20 {
				recs = append(recs, record(t, fmt.Sprint("k", i%3), fmt.Sprint("r", i), 1))
			}
			s.produce(t, recs...)
			s.trips.batches.Store(0)
			s.trips.queries.Store(0)
			app := s.start(t, hc.make(c), 0)
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 20 {
					return fmt.Sprintf("stats %+v, want 20 applied", st)
				}
				return ""
			})
			txs := app.Stats().Batches
			wantQueries := int64(0) // the BatchHandler only queues
			if hc.name == "plain" {
				wantQueries = 2 * txs // the counter's Apply: one read, one write
			}
			if b, q, cp := s.trips.batches.Load(), s.trips.queries.Load(), s.trips.copies.Load(); b != 2*txs || q != wantQueries || cp != 0 {
				t.Errorf("%d transactions sent %d batches, %d COPYs and %d single statements, want %d, 0 and %d", txs, b, cp, q, 2*txs, wantQueries)
			}

			s.produce(t, recs[0])
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Duplicates != 1 {
					return fmt.Sprintf("stats %+v, want 1 duplicate", st)
				}
				return ""
			})
			wantQueries2 := wantQueries + 1 // the ROLLBACK of the attempt that skipped the lookup
			if hc.name == "plain" {
				wantQueries2 += 2 // Apply ran in that attempt
			}
			if b, q, cp := s.trips.batches.Load(), s.trips.queries.Load(), s.trips.copies.Load(); b != 2*txs+4 || q != wantQueries2 || cp != 0 {
				t.Errorf("a batch of one duplicate sent %d batches, %d COPYs and %d single statements, want 4, 0 and %d", b-2*txs, cp, q-wantQueries, wantQueries2-wantQueries)
			}
			if st := app.Stats(); st.LookupRetries != 1 {
				t.Errorf("stats %+v, want 1 lookup retry", st)
			}

			// Hundreds of new events at once: their rows go by COPY.
			copies := s.trips.copies.Load()
			var many []*kgo.Record
			for i := range 1500 {
				many = append(many, record(t, fmt.Sprint("k", i%3), fmt.Sprint("m", i), 1))
			}
			s.produce(t, many...)
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 1520 {
					return fmt.Sprintf("stats %+v, want 1520 applied", st)
				}
				return ""
			})
			if cp := s.trips.copies.Load() - copies; cp < 1 {
				t.Errorf("1,500 new events in a few batches were recorded with %d COPYs, want at least 1", cp)
			}
		})
	}
}

// A batch whose handler fails, or whose writes fail in Postgres with a
// transient error, is rolled back whole (position, claims, quarantine, state)
// and retried until it commits, once; no connection is left inside a
// transaction.
func TestFailedBatchRetried(t *testing.T) {
	failures := []struct {
		name   string
		toggle func(c *counter, on bool)
	}{
		{"handler error", func(c *counter, on bool) { c.fail.Store(on) }},
		{"write fails in Postgres (serialization failure)", func(c *counter, on bool) { c.violate.Store(on) }},
	}
	for _, hc := range handlers() {
		for _, f := range failures {
			t.Run(hc.name+"/"+f.name, func(t *testing.T) {
				s := newStack(t)
				c := new(counter)
				f.toggle(c, true)
				s.produce(t, record(t, "a", "a1", 1), record(t, "c", "bad", 0), record(t, "b", "b1", 10), record(t, "a", "a2", 2))
				app := s.start(t, hc.make(c), 0)
				testenv.Eventually(t, 20*time.Second, func() string {
					if n, st := c.failed.Load(), app.Stats(); n < 2 || st.Retries < 2 {
						return fmt.Sprintf("failed %d times, stats %+v; want at least 2 failures and retries", n, st)
					}
					return ""
				})
				if p := s.position(t); p != 0 {
					t.Errorf("applied position = %d while the batch fails, want 0", p)
				}
				for _, table := range []string{"processed_events", "quarantine", "counters"} {
					if n := s.value(t, `SELECT count(*) FROM `+pgx.Identifier{table}.Sanitize()); n != 0 {
						t.Errorf("%s has %d rows while the batch fails, want 0", table, n)
					}
				}

				f.toggle(c, false)
				testenv.Eventually(t, 20*time.Second, func() string {
					if st := app.Stats(); st.Applied != 3 || st.Quarantined != 1 {
						return fmt.Sprintf("stats %+v, want 3 applied, 1 quarantined", st)
					}
					return ""
				})
				s.checkState(t, state{counters: map[string]int64{"a": 3, "b": 10}, processed: 3, quarantined: 1, position: 4})
				if st := app.Stats(); st.Batches != 1 {
					t.Errorf("stats %+v, want the one batch committed once", st)
				}
				s.checkNoOpenTransaction(t)
				checkPath(t, hc.name, c)
			})
		}
	}
}

// Stopping an applier whose batch is stuck in Postgres (here: its
// compare-and-set waits for a lock) aborts the batch once the shutdown grace
// is over: Run returns, nothing of the batch commits, no session stays in a
// transaction, and the next member applies the records once.
func TestShutdownAbortsStuckBatch(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStack(t)
			ctx := t.Context()
			c := new(counter)
			lock := s.lockPosition(t, 0)
			s.produce(t, record(t, "a", "a1", 1), record(t, "b", "b1", 10))
			app := s.start(t, hc.make(c), 200*time.Millisecond)
			s.waitCompareAndSets(t, "the applier's compare-and-set", lock)
			if took := app.stop(t, 10*time.Second); took > 5*time.Second {
				t.Errorf("Run took %v to return with a batch stuck, want about the shutdown grace (200ms)", took)
			}
			if err := lock.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			s.checkNoOpenTransaction(t)
			if p, n := s.position(t), s.value(t, `SELECT count(*) FROM processed_events`); p != 0 || n != 0 {
				t.Fatalf("after the aborted batch: position %d, %d processed events; want 0 and 0", p, n)
			}

			next := s.start(t, hc.make(c), 0)
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := next.Stats(); st.Applied != 2 {
					return fmt.Sprintf("stats %+v, want 2 applied", st)
				}
				return ""
			})
			if got, want := s.counters(t), map[string]int64{"a": 1, "b": 10}; !maps.Equal(got, want) {
				t.Errorf("counters = %v, want %v", got, want)
			}
		})
	}
}

// A partition whose records wait for a transaction slot (all are in use by
// other partitions) cuts its batch when it gets one: the records that arrived
// while it waited, in fetches of their own, join one transaction instead of
// queueing for one each.
func TestBatchCutWhenSlotFree(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStackPartitions(t, 2)
			ctx := t.Context()
			c := new(counter)
			produce := s.partitionProducer(t)
			// Partition 0's first transaction holds the only slot, stuck on
			// a lock on its applied position.
			lock := s.lockPosition(t, 0)
			produce(0, "a", "a1")
			app := s.startConfig(t, hc.make(c), applier.Config{Concurrency: 1})
			s.waitCompareAndSets(t, "partition 0's compare-and-set", lock)
			// Partition 1's records arrive apart: each in a fetch of its own,
			// queued by its worker, which waits for the slot, before the
			// next is produced.
			for i, id := range []string{"b1", "b2", "b3"} {
				produce(1, "b", id)
				testenv.Eventually(t, 20*time.Second, func() string {
					if n := applier.Queued(app.Applier, 1); n != i+1 {
						return fmt.Sprintf("partition 1's worker holds %d records queued, want %d (stats %+v)", n, i+1, app.Stats())
					}
					return ""
				})
			}
			if st := app.Stats(); st.Batches != 0 {
				t.Fatalf("stats %+v while the only slot is held, want no batch committed", st)
			}
			if err := lock.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 4 {
					return fmt.Sprintf("stats %+v, want 4 applied", st)
				}
				return ""
			})
			if st := app.Stats(); st.Batches != 2 {
				t.Errorf("stats %+v, want 2 batches: partition 0's and one with partition 1's three records", st)
			}
			if got, want := s.counters(t), map[string]int64{"a": 1, "b": 3}; !maps.Equal(got, want) {
				t.Errorf("counters = %v, want %v", got, want)
			}
			s.checkNoOpenTransaction(t)
		})
	}
}

// The same event in two partitions applied at once (a request ID reused for
// another aggregate): both transactions find it new, the one that records it
// second fails on the processed-event key, rolls back whole and, retried,
// skips it as a duplicate. It is applied once, and the other events of both
// batches once each.
func TestSameEventInTwoPartitions(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStackPartitions(t, 2)
			c := new(counter)
			produce := s.partitionProducer(t)
			// Both partitions' first transactions wait on a lock, so that
			// they start together once it is gone.
			lock0, lock1 := s.lockPosition(t, 0), s.lockPosition(t, 1)
			produce(0, "c", "c1")
			produce(0, "a", "same")
			produce(1, "b", "b1")
			produce(1, "a", "same")
			app := s.startConfig(t, hc.make(c), applier.Config{Concurrency: 2})
			s.waitCompareAndSets(t, "both partitions' compare-and-set", lock0, lock1)
			for _, lock := range []pgx.Tx{lock0, lock1} {
				if err := lock.Rollback(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied+st.Duplicates != 4 {
					return fmt.Sprintf("stats %+v, want 4 records processed", st)
				}
				return ""
			})
			st := app.Stats()
			if st.Applied != 3 || st.Duplicates != 1 || st.Conflicts != 0 || st.Quarantined != 0 {
				t.Errorf("stats %+v, want 3 applied and 1 duplicate", st)
			}
			t.Logf("batches retried: %d (1 when both found the event new)", st.Retries)
			if got, want := s.counters(t), map[string]int64{"a": 1, "b": 1, "c": 1}; !maps.Equal(got, want) {
				t.Errorf("counters = %v, want %v", got, want)
			}
			if n := s.value(t, `SELECT count(*) FROM processed_events`); n != 3 {
				t.Errorf("processed_events has %d rows, want 3", n)
			}
			s.checkNoOpenTransaction(t)
		})
	}
}
