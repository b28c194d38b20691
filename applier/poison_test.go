package applier_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// quarantineRow is one row of the quarantine table, as tests compare them.
type quarantineRow struct {
	offset int64
	kind   string
	state  string
	key    string
}

func (r quarantineRow) String() string {
	return fmt.Sprintf("%d:%s/%s/%s", r.offset, r.kind, r.state, r.key)
}

// quarantine returns the quarantine rows of partition 0 in log order, and the
// reason of each by offset.
func (s *stack) quarantine(t *testing.T) ([]quarantineRow, map[int64]string) {
	t.Helper()
	rows, err := s.pool.Query(t.Context(), `SELECT "offset", kind, state, convert_from(key, 'UTF8'), reason FROM quarantine
WHERE topic = $1 AND partition = 0 ORDER BY "offset"`, s.topic)
	if err != nil {
		t.Fatalf("read quarantine: %v", err)
	}
	defer rows.Close()
	var out []quarantineRow
	reasons := make(map[int64]string)
	for rows.Next() {
		var (
			r      quarantineRow
			reason string
		)
		if err := rows.Scan(&r.offset, &r.kind, &r.state, &r.key, &reason); err != nil {
			t.Fatalf("read quarantine: %v", err)
		}
		out = append(out, r)
		reasons[r.offset] = reason
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read quarantine: %v", err)
	}
	return out, reasons
}

// An event that decodes but can never apply — it breaks a constraint in
// Postgres, found by splitting the batch, or the handler rejects it with
// applier.Quarantine — is quarantined with the reason; its key's later events
// are parked in log order, in this batch and in later ones, while the other
// keys' events apply once, in order, around it.
func TestPoisonFoundDuringApply(t *testing.T) {
	poisons := []struct {
		name   string
		inc    int64
		reason string
	}{
		{"breaks a CHECK in Postgres", tooBig, "SQLSTATE 23514"},
		{"rejected by the handler", unlucky, "the counter does not take 777"},
	}
	for _, hc := range handlers() {
		for _, pc := range poisons {
			t.Run(hc.name+"/"+pc.name, func(t *testing.T) {
				s := newStack(t)
				c := new(counter)
				s.produce(t,
					record(t, "a", "a1", 1), // 0
					record(t, "c", "c1", 5), // 1: before the poison, applied
					record(t, "b", "b1", 10),
					record(t, "c", "c-poison", pc.inc), // 3
					record(t, "a", "a2", 2),
					record(t, "c", "c2", 1), // 5: parked
					record(t, "b", "b2", 20),
				)
				app := s.start(t, hc.make(c), 0)
				testenv.Eventually(t, 20*time.Second, func() string {
					if st := app.Stats(); st.Applied != 5 || st.Quarantined != 1 || st.Parked != 1 {
						return fmt.Sprintf("stats %+v, want 5 applied, 1 quarantined, 1 parked", st)
					}
					return ""
				})
				// A later batch: the key stays parked, the others flow.
				s.produce(t, record(t, "c", "c3", 1), record(t, "a", "a3", 3))
				testenv.Eventually(t, 20*time.Second, func() string {
					if st := app.Stats(); st.Applied != 6 || st.Parked != 2 {
						return fmt.Sprintf("stats %+v, want 6 applied, 2 parked", st)
					}
					return ""
				})
				s.checkState(t, state{counters: map[string]int64{"a": 6, "b": 30, "c": 5}, processed: 6, quarantined: 3, position: 9})
				got, reasons := s.quarantine(t)
				want := []quarantineRow{{3, "poison", "open", "c"}, {5, "parked", "open", "c"}, {7, "parked", "open", "c"}}
				if !slices.Equal(got, want) {
					t.Errorf("quarantine = %v, want %v", got, want)
				}
				if !strings.Contains(reasons[3], pc.reason) {
					t.Errorf("the poison record's reason %q does not say %q", reasons[3], pc.reason)
				}
				if n := s.value(t, `SELECT count(*) FROM parked_keys WHERE topic = $1 AND partition = 0 AND key = 'c'`, s.topic); n != 1 {
					t.Errorf("parked_keys holds key c %d times, want once", n)
				}
				s.checkNoOpenTransaction(t)
			})
		}
	}
}

// A record that fails alone once with an error an event may cause is tried
// again before it is called poison: the failure may have come from elsewhere
// (a race with another transaction). Here the failure happens once only, and
// the record applies.
func TestLoneFailureTriedAgain(t *testing.T) {
	s := newStack(t)
	c := new(counter)
	c.checkOnce.Store(true)
	s.produce(t, record(t, "a", "a1", 1))
	app := s.start(t, batchCounter{c}, 0)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Applied != 1 {
			return fmt.Sprintf("stats %+v, want the record applied on its second try", st)
		}
		return ""
	})
	if st := app.Stats(); st.Quarantined != 0 || st.Retries != 1 {
		t.Errorf("stats %+v, want 1 retry and nothing quarantined", st)
	}
	s.checkState(t, state{counters: map[string]int64{"a": 1}, processed: 1, position: 1})
}

// An error no event causes (a missing table: the database is not migrated)
// quarantines nothing however often it fails: the batch is retried until the
// table is there.
func TestSystemicFailureQuarantinesNothing(t *testing.T) {
	s := newStack(t)
	c := new(counter)
	if _, err := s.pool.Exec(t.Context(), `ALTER TABLE counters RENAME TO counters_away`); err != nil {
		t.Fatal(err)
	}
	s.produce(t, record(t, "a", "a1", 1), record(t, "b", "b1", 2))
	app := s.start(t, batchCounter{c}, 0)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Retries < 3 {
			return fmt.Sprintf("stats %+v, want the batch retried", st)
		}
		return ""
	})
	if st := app.Stats(); st.Quarantined != 0 || st.Applied != 0 {
		t.Fatalf("stats %+v while the table is missing, want nothing quarantined or applied", st)
	}
	if _, err := s.pool.Exec(t.Context(), `ALTER TABLE counters_away RENAME TO counters`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Applied != 2 {
			return fmt.Sprintf("stats %+v, want 2 applied", st)
		}
		return ""
	})
	s.checkState(t, state{counters: map[string]int64{"a": 1, "b": 2}, processed: 2, position: 2})
}
