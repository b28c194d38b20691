package applier_test

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
)

// A batch skips the dedup lookup while its partition meets no duplicate: a
// duplicate in the topic then fails the batch on the processed-event key,
// and the batch is applied again with the lookup, at once, skipping the
// duplicate. Nothing is applied twice.
func TestSkippedLookupMeetsDuplicate(t *testing.T) {
	for _, hc := range handlers() {
		t.Run(hc.name, func(t *testing.T) {
			s := newStack(t)
			c := new(counter)
			s.produce(t, record(t, "a", "a1", 1), record(t, "b", "b1", 10))
			app := s.start(t, hc.make(c), 0)
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 2 {
					return fmt.Sprintf("stats %+v, want 2 applied", st)
				}
				return ""
			})
			// A producer's retry writes a1 again, with a new event.
			s.produce(t, record(t, "a", "a1", 1), record(t, "a", "a2", 2))
			testenv.Eventually(t, 20*time.Second, func() string {
				if st := app.Stats(); st.Applied != 3 || st.Duplicates != 1 {
					return fmt.Sprintf("stats %+v, want 3 applied, 1 duplicate", st)
				}
				return ""
			})
			st := app.Stats()
			if st.LookupRetries != 1 || st.Retries != 1 {
				t.Errorf("stats %+v, want 1 retry, of the batch that skipped the lookup", st)
			}
			s.checkState(t, state{counters: map[string]int64{"a": 3, "b": 10}, processed: 3, position: 4})
		})
	}
}

// A processed row recorded before rows carried keys (key_hash 0, as the
// migration leaves rows it cannot give a key) is recognised by the lookup
// only: while one exists, every batch looks up, and the event is a duplicate,
// not applied again.
func TestKeylessRowForcesLookup(t *testing.T) {
	s := newStack(t)
	c := new(counter)
	old := record(t, "a", "old", 5)
	if _, err := s.pool.Exec(t.Context(), `INSERT INTO processed_events (event_id, fingerprint) VALUES ($1, $2)`,
		envelope.EventID("old"), fingerprint(t, old)); err != nil {
		t.Fatal(err)
	}
	s.produce(t, old, record(t, "a", "new", 1))
	app := s.start(t, batchCounter{c}, 0)
	testenv.Eventually(t, 20*time.Second, func() string {
		if st := app.Stats(); st.Applied+st.Duplicates != 2 {
			return fmt.Sprintf("stats %+v, want 2 records processed", st)
		}
		return ""
	})
	if st := app.Stats(); st.Applied != 1 || st.Duplicates != 1 || st.LookupRetries != 0 {
		t.Errorf("stats %+v, want 1 applied, 1 duplicate, no lookup retry", st)
	}
	if got, want := s.counters(t), map[string]int64{"a": 1}; !maps.Equal(got, want) {
		t.Errorf("counters = %v, want %v (the old event not applied again)", got, want)
	}
}

// fingerprint is the fingerprint the applier gives rec.
func fingerprint(t *testing.T, rec *kgo.Record) int64 {
	t.Helper()
	var env envelopev1.Envelope
	if err := proto.Unmarshal(rec.Value, &env); err != nil {
		t.Fatal(err)
	}
	return envelope.Fingerprint(&env)
}
