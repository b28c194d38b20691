package applier_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/internal/testenv"
)

// retryCounter is an applier.Observer counting retried attempts by class.
type retryCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *retryCounter) BatchApplied(int32, []*kgo.Record, time.Duration, applier.BatchStats) {}

func (c *retryCounter) BatchRetried(_ int32, class string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = make(map[string]int)
	}
	c.n[class]++
}

func (c *retryCounter) counts() (map[string]int, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	total := 0
	for _, n := range c.n {
		total += n
	}
	return maps.Clone(c.n), total
}

// lines is a log destination that keeps what is written, line by line.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.buf.String(), "\n"), "\n")
}

// refuseSQL is a trigger function that fails as a too large index row does
// (hole 3 of issue 26), whatever is stored.
const refuseSQL = `CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
RAISE EXCEPTION 'index row requires 20032 bytes, maximum size is 8191' USING ERRCODE = 'program_limit_exceeded'; END $$`

// A store of the quarantine that keeps failing, with the error a too large
// key gave (SQLSTATE 54000) on the INSERT or at COMMIT, never makes the
// applier spin: its attempts back off, the failures are counted in a
// metric's class, and it writes a few log lines, not one per attempt (hole 3
// of issue 26: 5,981 lines in 5 s). Once the store works again the
// partition moves on: the junk record is quarantined and the other keys'
// records apply.
func TestQuarantineStoreFailureBacksOff(t *testing.T) {
	const window = 4 * time.Second // how long the store keeps failing
	cases := []struct {
		name    string
		trigger string
		// class is the retry class the failure is counted in.
		class string
	}{
		{"the insert fails", `CREATE TRIGGER refuse BEFORE INSERT ON quarantine FOR EACH ROW EXECUTE FUNCTION refuse()`, "quarantine-store"},
		{"the commit fails", `CREATE CONSTRAINT TRIGGER refuse AFTER INSERT ON quarantine DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW EXECUTE FUNCTION refuse()`, "event-caused"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s := newStack(t)
			for _, sql := range []string{refuseSQL, tc.trigger} {
				if _, err := s.pool.Exec(t.Context(), sql); err != nil {
					t.Fatal(err)
				}
			}
			s.produce(t, record(t, "a", "a1", 1), &kgo.Record{Key: []byte("junk"), Value: []byte("\xff garbage")}, record(t, "b", "b1", 1))
			obs := new(retryCounter)
			logged := new(lines)
			s.startConfig(t, new(counter), applier.Config{Observer: obs,
				Logger: slog.New(slog.NewTextHandler(logged, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			testenv.Eventually(t, 30*time.Second, func() string {
				if n, _ := obs.counts(); n[tc.class] == 0 {
					return fmt.Sprintf("no attempt failed with class %s yet (retries: %v)", tc.class, n)
				}
				return ""
			})
			time.Sleep(window) // the store keeps failing meanwhile
			byClass, attempts := obs.counts()
			got := logged.all()
			t.Logf("in %v of failing: %d attempts retried %v, %d log lines", window, attempts, byClass, len(got))
			// Backing off from 100ms, an attempt every 0.1-1.5s: some 10
			// attempts; spinning, thousands.
			if attempts > 40 {
				t.Errorf("%d attempts retried while the store failed for %v (%v): the applier spins instead of backing off", attempts, window, byClass)
			}
			// A line per kind of retry, then one per 20s.
			if len(got) > 5 {
				t.Errorf("%d log lines while the store failed for %v, want at most 5:\n%s", len(got), window, strings.Join(got, "\n"))
			}
			if _, err := s.pool.Exec(t.Context(), `DROP TRIGGER refuse ON quarantine`); err != nil {
				t.Fatal(err)
			}
			testenv.Eventually(t, 30*time.Second, func() string {
				if p := s.position(t); p != 3 {
					return fmt.Sprintf("applied position %d, want 3, after the store works again", p)
				}
				return ""
			})
			s.checkState(t, state{counters: map[string]int64{"a": 1, "b": 1}, processed: 2, quarantined: 1, position: 3})
		})
	}
}
