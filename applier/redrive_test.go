package applier_test

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/envelope"
	"github.com/heed-dev/heed/internal/testenv"
)

// poisonedKey starts an applier on a fresh stack and produces, for key c, a
// record before a poison one (it breaks the counters' CHECK), the poison one
// and two after it, with records of key a in between, and waits until the
// applier has quarantined and parked them.
func poisonedKey(t *testing.T) (*stack, *counter, *running) {
	t.Helper()
	s := newStack(t)
	c := new(counter)
	app := s.start(t, batchCounter{c}, 0)
	s.produce(t,
		record(t, "c", "c1", 5),            // 0
		record(t, "a", "a1", 1),            // 1
		record(t, "c", "c-poison", tooBig), // 2
		record(t, "c", "c2", 1),            // 3: parked
		record(t, "a", "a2", 2),            // 4
		record(t, "c", "c3", 1),            // 5: parked
	)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Applied != 3 || st.Quarantined != 1 || st.Parked != 2 {
			return fmt.Sprintf("stats %+v, want 3 applied, 1 quarantined, 2 parked", st)
		}
		return ""
	})
	return s, c, app
}

// fixCheck lifts the CHECK the poison record breaks: the fix a re-drive waits for.
func fixCheck(t *testing.T, s *stack) {
	t.Helper()
	if _, err := s.pool.Exec(t.Context(), `ALTER TABLE counters DROP CONSTRAINT counters_n_check`); err != nil {
		t.Fatal(err)
	}
}

// After a fix (here the constraint it broke is lifted), re-driving the poison
// record applies it and the key's parked records, in log order, once; the key
// is released, so its next record applies at once; a second re-drive finds
// nothing open.
func TestRedriveAfterFix(t *testing.T) {
	s, c, _ := poisonedKey(t)

	// Without the fix the record is still poison: nothing changes.
	res, err := applier.Redrive(t.Context(), s.pool, batchCounter{c}, s.topic, 0, 2)
	if err != nil {
		t.Fatalf("redrive before the fix: %v", err)
	}
	if res.Applied != 0 || res.Poison != 2 || res.Parked != 2 {
		t.Errorf("redrive before the fix = %+v, want nothing applied, offset 2 still poison, 2 parked", res)
	}

	fixCheck(t, s)
	res, err = applier.Redrive(t.Context(), s.pool, batchCounter{c}, s.topic, 0, 2)
	if err != nil {
		t.Fatalf("redrive: %v", err)
	}
	if res.Applied != 3 || res.Poison != -1 || res.Parked != 0 || string(res.Key) != "c" {
		t.Errorf("redrive = %+v, want 3 applied of key c, nothing left", res)
	}
	got, _ := s.quarantine(t)
	want := []quarantineRow{{2, "poison", "redriven", "c"}, {3, "parked", "redriven", "c"}, {5, "parked", "redriven", "c"}}
	if !slices.Equal(got, want) {
		t.Errorf("quarantine = %v, want %v", got, want)
	}
	s.produce(t, record(t, "c", "c4", 10))
	testenv.Eventually(t, 20*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": 3, "c": 5 + tooBig + 2 + 10}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		return ""
	})
	if n := s.value(t, `SELECT count(*) FROM parked_keys`); n != 0 {
		t.Errorf("parked_keys has %d rows after the re-drive, want 0", n)
	}
	if n := s.value(t, `SELECT count(*) FROM processed_events`); n != 7 {
		t.Errorf("processed_events has %d rows, want 7", n)
	}
	if _, err := applier.Redrive(t.Context(), s.pool, batchCounter{c}, s.topic, 0, 2); !errors.Is(err, applier.ErrNotQuarantined) {
		t.Errorf("second redrive: %v, want ErrNotQuarantined", err)
	}
}

// Dropping the poison record releases the key: its parked records apply in
// log order, the dropped event never does, and a retry of the dropped command
// (its event again, later in the log) is a duplicate.
func TestDropPoison(t *testing.T) {
	s, c, app := poisonedKey(t)

	res, err := applier.Drop(t.Context(), s.pool, batchCounter{c}, s.topic, 0, 2, "ticket 42: not a real deposit")
	if err != nil {
		t.Fatalf("drop: %v", err)
	}
	if res.Applied != 2 || res.Dropped != 2 || res.Poison != -1 {
		t.Errorf("drop = %+v, want offset 2 dropped, 2 applied", res)
	}
	q, err := applier.GetQuarantined(t.Context(), s.pool, s.topic, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if q.State != "dropped" || q.EventID == nil || *q.EventID != envelope.EventID("c-poison") {
		t.Errorf("dropped record = %+v, want state dropped with its event ID", q)
	}
	outcome, reason, err := applier.QuarantineOutcome(t.Context(), s.pool, s.topic, envelope.EventID("c-poison"), "")
	if err != nil || outcome != applier.OutcomeDropped {
		t.Errorf("QuarantineOutcome of the dropped event = %v %q %v, want dropped", outcome, reason, err)
	}

	s.produce(t, record(t, "c", "c-poison", tooBig), record(t, "c", "c4", 10))
	testenv.Eventually(t, 20*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": 3, "c": 5 + 2 + 10}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		return ""
	})
	if st := app.Stats(); st.Duplicates != 1 {
		t.Errorf("stats %+v, want the retried dropped command seen as a duplicate", st)
	}
}

// A re-drive waits for the partition's applier and the applier for it: a
// record of the key that arrives while the re-drive runs applies after the
// re-driven ones, never before them and never parked for good.
func TestRedriveWhileApplying(t *testing.T) {
	s, c, _ := poisonedKey(t)
	fixCheck(t, s)
	done := make(chan error, 1)
	for i := range 20 {
		s.produce(t, record(t, "c", fmt.Sprint("c-late", i), 1))
		if i == 5 {
			go func() {
				_, err := applier.Redrive(t.Context(), s.pool, batchCounter{c}, s.topic, 0, 2)
				done <- err
			}()
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("redrive: %v", err)
	}
	// Whatever was parked before the re-drive took its lock was re-driven;
	// whatever came after applies directly. Anything parked meanwhile would
	// stay parked: there must be none.
	testenv.Eventually(t, 20*time.Second, func() string {
		if got, want := s.counters(t), map[string]int64{"a": 3, "c": 5 + tooBig + 2 + 20}; !maps.Equal(got, want) {
			return fmt.Sprintf("counters %v, want %v", got, want)
		}
		return ""
	})
	if n := s.value(t, `SELECT count(*) FROM quarantine WHERE state = 'open'`); n != 0 {
		t.Errorf("%d records are still open in the quarantine, want 0", n)
	}
}
