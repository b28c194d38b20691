package chaos

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/envelope"
	"github.com/heed-dev/heed/internal/testenv"
)

// waitServing waits until every server answers.
func waitServing(t *testing.T, s *stack) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func() string {
		for _, sl := range s.serves {
			if err := send(clientFor(sl.addr), command{requestID: "probe-" + sl.name, account: "probe", kind: "open"}); err != nil {
				return fmt.Sprintf("%s: %v", sl.name, err)
			}
		}
		return ""
	})
}

// clearFailpoints stops every process started with a failpoint that has not
// crashed yet; revive starts it again unarmed.
func (s *stack) clearFailpoints() {
	for _, sl := range s.all() {
		sl.mu.Lock()
		p := sl.proc
		sl.mu.Unlock()
		if p != nil && p.running() && strings.Contains(strings.Join(p.cmd.Env, " "), "HEED_FAILPOINTS=") {
			s.terminate(sl) // leaves the group, unless armed at apply/revoke: then it crashes there
			s.log.add("clear-failpoint", sl.name+" stopped, to start again unarmed")
		}
	}
}

// checkConverged waits until every partition's applied position is the
// topic's end, and returns how long after lastFault that was and how many
// records the topic holds.
func checkConverged(t *testing.T, s *stack, lastFault time.Time) (time.Duration, int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	conn, err := pgx.Connect(t.Context(), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), "heed.ledger.events")
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 120*time.Second, func() string {
		behind := behindEnds(t, conn, ends)
		if len(behind) > 0 {
			s.revive() // a process that died late (a failpoint) comes back
		}
		return strings.Join(behind, "; ")
	})
	var records int64
	ends.Each(func(o kadm.ListedOffset) { records += o.Offset })
	return time.Since(lastFault), records
}

// behindEnds lists the partitions whose applied position is not at their
// end in ends, or the error reading it.
func behindEnds(t *testing.T, conn *pgx.Conn, ends kadm.ListedOffsets) []string {
	var behind []string
	ends.Each(func(o kadm.ListedOffset) {
		var next int64
		if err := conn.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM heed.applied_positions WHERE topic = 'heed.ledger.events' AND partition = $1`, o.Partition).Scan(&next); err != nil {
			behind = append(behind, err.Error())
		} else if next != o.Offset {
			behind = append(behind, fmt.Sprintf("partition %d at %d of %d", o.Partition, next, o.Offset))
		}
	})
	return behind
}

// checkExactlyOnce checks the database against the acknowledged commands:
// each applied or rejected exactly once (one processed row each, none
// pending, nothing else processed but the probes), the balances equal to
// the model their recorded outcomes give, and nothing quarantined. It
// returns how many events are processed, probes included.
func checkExactlyOnce(t *testing.T, s *stack, acked []command) int64 {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	type ref struct {
		id  uuid.UUID
		key string
	}
	rows, err := conn.Query(t.Context(), `SELECT event_id, aggregate, status FROM heed.processed_events WHERE aggregate <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	outcome := map[ref]int16{}
	for rows.Next() {
		var (
			id     [16]byte
			key    string
			status int16
		)
		if err := rows.Scan(&id, &key, &status); err != nil {
			t.Fatal(err)
		}
		outcome[ref{id, key}] = status
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(outcome) != len(acked) {
		t.Errorf("%d events processed, %d commands acknowledged: want each acknowledged command processed once and nothing else", len(outcome), len(acked))
	}
	model := map[string]int64{} // accounts opened, with their balances
	missing := 0
	for _, c := range acked {
		st, ok := outcome[ref{envelope.EventID(c.requestID), c.account}]
		switch {
		case !ok:
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged %s %s of %s (%d) was never applied or rejected", c.kind, c.requestID, c.account, c.amount)
			}
			continue
		case st == 3: // rejected: no effect
			continue
		case st != 2:
			t.Errorf("%s %s has status %d, want applied or rejected", c.kind, c.requestID, st)
			continue
		}
		switch c.kind {
		case "open":
			model[c.account] += 0
		case "deposit":
			model[c.account] += c.amount
		case "withdraw":
			model[c.account] -= c.amount
		}
	}
	if missing > 0 {
		t.Errorf("%d acknowledged commands lost", missing)
	}
	got := map[string]int64{}
	brows, err := conn.Query(t.Context(), `SELECT account_id, balance FROM heed.accounts WHERE account_id <> 'probe'`)
	if err != nil {
		t.Fatal(err)
	}
	for brows.Next() {
		var (
			a string
			b int64
		)
		if err := brows.Scan(&a, &b); err != nil {
			t.Fatal(err)
		}
		got[a] = b
	}
	if !maps.Equal(got, model) {
		t.Errorf("balances %v, want %v (the model from the recorded outcomes)", got, model)
	}
	var quarantined, processed int64
	if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM heed.quarantine), (SELECT count(*) FROM heed.processed_events)`).Scan(&quarantined, &processed); err != nil || quarantined != 0 {
		t.Errorf("the quarantine holds %d records (%v), want none: nothing was poisoned", quarantined, err)
	}
	return processed
}

// progress watches, during a run, how long each partition with records
// waiting went without its applied position moving: the time the pipeline
// took to recover from the faults around it.
type progress struct {
	mu      sync.Mutex
	longest time.Duration
	which   int32
	at      time.Duration // into the run, when the longest stall ended or was last seen
}

// watchPartitions samples the topic's ends and the applied positions every
// 500 ms until ctx ends. A sample that cannot be read (Postgres down) counts
// as no movement.
func watchPartitions(ctx context.Context, s *stack, start time.Time) *progress {
	pr := &progress{}
	go func() {
		cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr))
		if err != nil {
			return
		}
		defer cl.Close()
		adm := kadm.NewClient(cl)
		var conn *pgx.Conn // kept between samples; dialed again after Postgres went away
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		pos := map[int32]int64{}
		moved := map[int32]time.Time{}
		for ctx.Err() == nil {
			time.Sleep(500 * time.Millisecond)
			ends, err := adm.ListEndOffsets(ctx, "heed.ledger.events")
			if err != nil {
				continue
			}
			now := time.Now()
			var positions map[int32]int64
			positions, conn = readPositions(ctx, conn, s.dbURL)
			ends.Each(func(o kadm.ListedOffset) {
				p, ok := positions[o.Partition]
				if _, seen := moved[o.Partition]; !seen || (ok && p != pos[o.Partition]) || (ok && p >= o.Offset) {
					moved[o.Partition], pos[o.Partition] = now, p
					return
				}
				if stall := now.Sub(moved[o.Partition]); stall > 0 {
					pr.mu.Lock()
					if stall > pr.longest {
						pr.longest, pr.which, pr.at = stall, o.Partition, now.Sub(start)
					}
					pr.mu.Unlock()
				}
			})
		}
	}()
	return pr
}

func (pr *progress) String() string {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return fmt.Sprintf("longest time a partition with records waiting did not move: %v (partition %d, at %.1fs)",
		pr.longest.Round(100*time.Millisecond), pr.which, pr.at.Seconds())
}

// readPositions reads every partition's applied position on conn, dialing
// dbURL when conn is nil or broken; none when the database cannot be read.
// It returns the connection to use next time (nil after a failure).
func readPositions(ctx context.Context, conn *pgx.Conn, dbURL string) (map[int32]int64, *pgx.Conn) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if conn == nil || conn.IsClosed() {
		var err error
		if conn, err = pgx.Connect(cctx, dbURL); err != nil {
			return nil, nil
		}
	}
	rows, err := conn.Query(cctx, `SELECT partition, next_offset FROM heed.applied_positions WHERE topic = 'heed.ledger.events'`)
	if err != nil {
		conn.Close(context.Background())
		return nil, nil
	}
	out := map[int32]int64{}
	for rows.Next() {
		var (
			p int32
			n int64
		)
		if rows.Scan(&p, &n) == nil {
			out[p] = n
		}
	}
	if rows.Err() != nil {
		conn.Close(context.Background())
		return nil, nil
	}
	return out, conn
}
