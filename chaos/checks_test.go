package chaos

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/topic"
)

// waitServing waits until every server takes a command.
func waitServing(t *testing.T, s *stack) {
	t.Helper()
	testenv.Eventually(t, 60*time.Second, func() string {
		for _, sl := range s.serves {
			if err := send(s.tg.client(sl.addr), s.tg.probe(sl.name)); err != nil {
				return fmt.Sprintf("%s: %v", sl.name, err)
			}
		}
		return ""
	})
}

// clearFailpoints stops every process started with a failpoint that has not
// crashed yet, for revive to start again unarmed, and lifts the relay's
// faults.
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
	s.healRelay()
}

// checkConverged waits until every partition's applied position is the
// topic's end (read again each time: the relay may still produce
// follow-ups), and returns how long after lastFault that was and how many
// records the topic holds then.
func checkConverged(t *testing.T, s *stack, lastFault time.Time) (time.Duration, int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	conn := s.connect(t)
	var ends kadm.ListedOffsets
	testenv.Eventually(t, 120*time.Second, func() string {
		if ends, err = adm.ListEndOffsets(t.Context(), s.topic()); err == nil {
			err = ends.Error()
		}
		if err != nil {
			return fmt.Sprintf("list end offsets: %v", err)
		}
		behind := behindEnds(t, s, conn, ends, false)
		if len(behind) > 0 {
			s.revive() // a process that died late (a failpoint) comes back
		}
		return strings.Join(behind, "; ")
	})
	var records int64
	ends.Each(func(o kadm.ListedOffset) { records += o.Offset })
	return time.Since(lastFault), records
}

// behindEnds lists the partitions whose applied position is before their
// end in ends (or, if exact, not at it), or the error reading it. A
// position past an end read earlier is not behind: the relay's follow-ups
// keep coming after the load stops.
func behindEnds(t *testing.T, s *stack, conn *pgx.Conn, ends kadm.ListedOffsets, exact bool) []string {
	var behind []string
	ends.Each(func(o kadm.ListedOffset) {
		var next int64
		if err := conn.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM `+s.table("applied_positions")+` WHERE topic = $1 AND partition = $2`, s.topic(), o.Partition).Scan(&next); err != nil {
			behind = append(behind, err.Error())
		} else if next < o.Offset || exact && next != o.Offset {
			behind = append(behind, fmt.Sprintf("partition %d at %d of %d", o.Partition, next, o.Offset))
		}
	})
	return behind
}

// checkOutcomes checks the processed events against the acknowledged
// commands: each applied or rejected exactly once (one processed row each,
// by its event ID in the domain's ID space and its key; none pending,
// nothing else processed but the probes and the follow-ups, which are the
// outbox's and the target's check to account for), and nothing
// quarantined. It returns each acknowledged command's outcome and how many
// events are processed, probes and follow-ups included.
func checkOutcomes(t *testing.T, s *stack, acked []command) ([]outcome, int64) {
	t.Helper()
	conn := s.connect(t)
	type ref = eventRef
	rows, err := conn.Query(t.Context(), `SELECT event_id, aggregate, status FROM `+s.table("processed_events")+` p WHERE aggregate <> 'probe'
AND NOT EXISTS (SELECT FROM `+s.table("outbox")+` o WHERE o.event_id = p.event_id AND o.key_hash = p.key_hash)`)
	if err != nil {
		t.Fatal(err)
	}
	found := map[ref]outcome{}
	for rows.Next() {
		var (
			id     [16]byte
			key    string
			status outcome
		)
		if err := rows.Scan(&id, &key, &status); err != nil {
			t.Fatal(err)
		}
		found[ref{id, key}] = status
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(found) != len(acked) {
		t.Errorf("%d events processed, %d commands acknowledged: want each acknowledged command processed once and nothing else", len(found), len(acked))
	}
	ids := s.tg.dom.IDs()
	outcomes := make([]outcome, len(acked))
	missing := 0
	for i, c := range acked {
		st, ok := found[ref{ids.EventID(c.requestID), c.key}]
		switch {
		case !ok:
			missing++
			if missing <= 5 {
				t.Errorf("acknowledged %s %s of %s was never applied or rejected: %+v", c.kind, c.requestID, c.key, c)
			}
		case st != applied && st != rejected:
			t.Errorf("%s %s has status %d, want applied or rejected", c.kind, c.requestID, st)
		}
		outcomes[i] = st
	}
	if missing > 0 {
		t.Errorf("%d acknowledged commands lost", missing)
	}
	var quarantined, processed int64
	if err := conn.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM `+s.table("quarantine")+`), (SELECT count(*) FROM `+s.table("processed_events")+`)`).Scan(&quarantined, &processed); err != nil || quarantined != 0 {
		t.Errorf("the quarantine holds %d records (%v), want none: nothing was poisoned", quarantined, err)
	}
	return outcomes, processed
}

// checkQuiet waits, once the faults are over, until the outbox has no
// unsent row (every follow-up applied or rejected: its event processed)
// and every partition's applied position is the topic's end as it is then
// (a follow-up applied may emit another), starting again what is down
// meanwhile; then it checks that the relay gave up on no row
// (heed_outbox_failed is empty). It returns how many outbox rows there are
// and how many records the topic holds then.
func checkQuiet(t *testing.T, s *stack) (rows, records int64) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	conn := s.connect(t)
	unsent := func() (int64, error) {
		var n int64
		err := conn.QueryRow(t.Context(), `SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT FROM `+s.table("processed_events")+` p
WHERE p.event_id = o.event_id AND p.key_hash = o.key_hash)) FROM `+s.table("outbox")+` o`).Scan(&rows, &n)
		return n, err
	}
	testenv.Eventually(t, 120*time.Second, func() string {
		before, err := unsent()
		if err != nil {
			return err.Error()
		}
		ends, err := adm.ListEndOffsets(t.Context(), s.topic())
		if err == nil {
			err = ends.Error()
		}
		if err != nil {
			return fmt.Sprintf("list end offsets: %v", err)
		}
		behind := behindEnds(t, s, conn, ends, true)
		// A record applied between the first count and the positions may
		// have emitted: count again.
		after, err := unsent()
		if err != nil {
			return err.Error()
		}
		if before == 0 && after == 0 && len(behind) == 0 {
			records = 0
			ends.Each(func(o kadm.ListedOffset) { records += o.Offset })
			return ""
		}
		s.revive()
		return fmt.Sprintf("%d of %d outbox rows unsent (their follow-up not processed); behind: %s", after, rows, strings.Join(behind, "; "))
	})
	var failed int64
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM `+s.table("heed_outbox_failed")).Scan(&failed); err != nil || failed != 0 {
		t.Errorf("heed_outbox_failed holds %d rows (%v), want none: the relay gave up on no follow-up", failed, err)
	}
	return rows, records
}

// checkCommands checks every acknowledged command's outcome
// (checkOutcomes), then the projection against them (the target's check);
// it returns how many events are processed and the target's summary.
func checkCommands(t *testing.T, s *stack, acked []command) (int64, string) {
	t.Helper()
	outcomes, processed := checkOutcomes(t, s, acked)
	return processed, s.tg.check(t, s, acked, outcomes)
}

// checkRebuild runs the binary's rebuild --verify: the topic replayed into
// a fresh schema must equal the live projection, table by table.
func checkRebuild(t *testing.T, s *stack) {
	t.Helper()
	out, err := runHeed(t.Context(), s.bin, nil, "rebuild", "--brokers", s.brokerAddr, "--database-url", s.dbURL, "--verify", "--log-level", "warn")
	if want := "verified: " + s.tg.dom.DefaultSchema() + "_rebuild equals " + s.tg.dom.DefaultSchema(); err != nil || !strings.Contains(out, want) {
		t.Errorf("%s rebuild --verify: %v\n%s\nwant %q", s.tg.name, err, out, want)
	}
}

// checkTopicGuard deletes the target's topic and creates it again (another
// topic ID, as a wiped broker or a recreated topic has), then checks that
// the running servers come to refuse commands, and that serve and apply
// started now refuse to start, naming the other incarnation. It ends the
// stack's use: nothing applies after it.
func checkTopicGuard(t *testing.T, s *stack) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	ctx := t.Context()
	old, err := topic.Describe(ctx, cl, s.topic())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := adm.DeleteTopic(ctx, s.topic()); err != nil {
		t.Fatalf("delete topic %s: %v", s.topic(), err)
	}
	// A running process may create it first (the embedded broker creates
	// a topic a client asks for): that is a new incarnation too.
	if _, err := adm.CreateTopic(ctx, old.Partitions, 1, nil, s.topic()); err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		t.Fatalf("create topic %s again: %v", s.topic(), err)
	}
	now, err := topic.Describe(ctx, cl, s.topic())
	if err != nil || now.ID == old.ID || now.Partitions != old.Partitions {
		t.Fatalf("the recreated topic: %v, %v; want another topic ID than %v, %d partitions", now, err, old.ID, old.Partitions)
	}
	s.log.add("recreate-topic", fmt.Sprintf("topic %s deleted and created again (topic ID %v, was %v)", s.topic(), now.ID, old.ID))

	// A running server checks every topic.DefaultGuardInterval: a probe it
	// takes before then is written to the new topic.
	testenv.Eventually(t, 30*time.Second, func() string {
		for _, sl := range s.serves {
			err := send(s.tg.client(sl.addr), s.tg.probe("after-recreate-"+sl.name))
			if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "another incarnation") {
				return fmt.Sprintf("%s, on the recreated topic, answered %v; want unavailable, another incarnation", sl.name, err)
			}
		}
		return ""
	})
	for _, verb := range []string{"serve", "apply"} {
		args := []string{verb, "--brokers", s.brokerAddr, "--database-url", s.dbURL, "--log-level", "warn"}
		if verb == "serve" {
			args = append(args, "--listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)))
		}
		out, err := runHeed(ctx, s.bin, nil, args...)
		var exit *exec.ExitError
		want := "refusing to start on schema " + s.tg.dom.DefaultSchema()
		if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(out, want) || !strings.Contains(out, "another incarnation") {
			t.Errorf("%s %s on the recreated topic: %v\n%s\nwant exit 1, %q, another incarnation", s.tg.name, verb, err, out, want)
		}
	}
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
			ends, err := adm.ListEndOffsets(ctx, s.topic())
			if err != nil {
				continue
			}
			now := time.Now()
			var positions map[int32]int64
			positions, conn = readPositions(ctx, s, conn)
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
// the stack's database when conn is nil or broken; none when the database
// cannot be read. It returns the connection to use next time (nil after a
// failure).
func readPositions(ctx context.Context, s *stack, conn *pgx.Conn) (map[int32]int64, *pgx.Conn) {
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if conn == nil || conn.IsClosed() {
		var err error
		if conn, err = pgx.Connect(cctx, s.dbURL); err != nil {
			return nil, nil
		}
	}
	rows, err := conn.Query(cctx, `SELECT partition, next_offset FROM `+s.table("applied_positions")+` WHERE topic = $1`, s.topic())
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
