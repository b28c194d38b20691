package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/internal/testenv"
)

// brokerRestartWithin bounds how long after the broker's last restart every
// partition must have applied the whole topic: the issue 26 reproduction
// left half of them unapplied for minutes.
const brokerRestartWithin = 15 * time.Second

// TestBrokerRestart SIGKILLs the `heed broker` process twice under load,
// each time restarting it at once on the same data dir and port, with serve
// and two apply processes running with KIP-848 groups (the default) or the
// classic protocol. Within brokerRestartWithin of the last restart every
// partition's applied position must reach the topic's end, and every
// acknowledged deposit must be applied exactly once (issue 26, hole 7).
//
// In the dropped-fetch case the second applier joins right after the last
// restart and hands the partitions of its first assignment back to its
// Kafka client without a start offset (the failpoint apply/drop-assigned):
// the group assigned them to it and the client never fetches them, the
// state the broker restarts of issue 26 left half of the partitions in. Its
// watchdog (--stall-timeout 2s) must notice and recover them.
func TestBrokerRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t, "failpoints")
	for _, tc := range []struct {
		name, protocol string
		dropFetch      bool
		applyArgs      []string
	}{
		{"consumer", "consumer", false, nil},
		// One transaction slot: a slot lost to a stale batch (the cause of
		// hole 7) stops the member at once.
		{"consumer-one-slot", "consumer", false, []string{"--apply-concurrency", "1"}},
		{"classic", "classic", false, nil},
		{"consumer-dropped-fetch", "consumer", true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) { testBrokerRestart(t, bin, tc.protocol, tc.dropFetch, tc.applyArgs...) })
	}
}

func testBrokerRestart(t *testing.T, bin, protocol string, dropFetch bool, applyArgs ...string) {
	dbURL := testenv.PostgresURL(t)
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	dataDir := t.TempDir()
	brokerArgs := []string{"broker", "--data-dir", dataDir, "--listen", brokerAddr}
	broker := startHeed(t, bin, brokerReadyLine, brokerArgs...)
	runTool(t, time.Minute, false, bin, "migrate", "--database-url", dbURL)
	common := []string{"--brokers", brokerAddr, "--database-url", dbURL}
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", listen}, common...)...)
	var applies []*process
	startApply := func(env []string, extra ...string) {
		args := append([]string{"apply", "--group-protocol", protocol, "--log-level", "info",
			"--metrics-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}, append(append(extra, applyArgs...), common...)...)
		applies = append(applies, startHeedEnv(t, env, bin, "partitions assigned", args...))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, a := range applies {
				out := a.stderr.String()
				if len(out) > 100_000 {
					out = out[len(out)-100_000:]
				}
				t.Logf("apply %d's log (tail):\n%s", i, out)
			}
		}
	})
	startApply(nil)
	if !dropFetch {
		startApply(nil)
	}

	const accounts = 16
	client := ledgerClient(listen)
	load := startDeposits(t, client, accounts)
	defer load.stop()

	// Two SIGKILLs of the broker, 4 s apart, each restarted at once on the
	// same data dir and port, as a supervisor would.
	time.Sleep(2 * time.Second)
	for i := range 2 {
		if i > 0 {
			time.Sleep(4 * time.Second)
		}
		broker.kill(t)
		broker = startHeed(t, bin, brokerReadyLine, brokerArgs...)
	}
	restarted := time.Now()
	if dropFetch {
		startApply([]string{"HEED_FAILPOINTS=apply/drop-assigned=fire"}, "--stall-timeout", "2s")
	}
	time.Sleep(2 * time.Second)
	acked := load.stop()
	if acked == 0 {
		t.Fatal("the load got no deposit acknowledged")
	}

	admin, err := kgo.NewClient(kgo.SeedBrokers(brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ends, err := kadm.NewClient(admin).ListEndOffsets(t.Context(), defaultTopic)
	if err != nil || ends.Error() != nil {
		t.Fatalf("list end offsets: %v %v", err, ends.Error())
	}
	testenv.Eventually(t, brokerRestartWithin-time.Since(restarted), func() string {
		var behind []string
		ends.Each(func(o kadm.ListedOffset) {
			var next int64
			if err := pool.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM heed.applied_positions WHERE topic = $1 AND partition = $2`, defaultTopic, o.Partition).Scan(&next); err != nil {
				behind = append(behind, err.Error())
			} else if next < o.Offset {
				behind = append(behind, fmt.Sprintf("partition %d applied up to %d of %d", o.Partition, next, o.Offset))
			}
		})
		if len(behind) > 0 {
			return fmt.Sprintf("%v after the broker's last restart: %s", time.Since(restarted).Round(100*time.Millisecond), strings.Join(behind, "; "))
		}
		return ""
	})
	waitDepositsApplied(t, pool, accounts, acked, 10*time.Second)
	if dropFetch && !strings.Contains(applies[1].stderr.String(), "failpoint apply/drop-assigned: firing") {
		t.Errorf("the armed applier never dropped an assignment's fetch: the case tested nothing")
	}
	recovered, rejoined := 0, 0
	for _, a := range applies {
		recovered += strings.Count(a.stderr.String(), "resuming and re-seeking their fetch")
		rejoined += strings.Count(a.stderr.String(), "leaving the group and joining it again")
	}
	t.Logf("group protocol %s: %d deposits acknowledged through two broker SIGKILLs; every partition applied %v after the last restart; the watchdogs recovered stalled fetches %d times and rejoined %d times",
		protocol, acked, time.Since(restarted).Round(100*time.Millisecond), recovered, rejoined)
}
