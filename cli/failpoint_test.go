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

// TestFailpointCrashes builds heed with failpoints and, under a steady load
// of deposits that callers retry with their request IDs until acknowledged,
// crashes a process (SIGKILL, no cleanup) at each point in turn, starting a
// healthy one after each crash:
//   - apply after its batch's first round trip, with its rows written but not
//     committed, and with the batch committed but its offset not;
//   - apply while its partitions are revoked (a second member joins);
//   - serve after the broker acknowledged a command, before the answer.
//
// At the end every acknowledged deposit is applied exactly once and every
// partition's applied position is the topic's end.
func TestFailpointCrashes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t, "failpoints")
	ps := startParts(t, bin)
	dbURL, brokerAddr, listen, common := ps.dbURL, ps.brokerAddr, ps.listen, ps.common
	serveArgs := append([]string{"serve", "--listen", listen}, common...)
	applyArgs := append([]string{"apply"}, common...)
	startServe := func(env ...string) *process { return startHeedEnv(t, env, bin, "serving Connect", serveArgs...) }
	startApply := func(env ...string) *process { return startHeedEnv(t, env, bin, "partitions assigned", applyArgs...) }

	serve := startServe()
	apply := startApply()
	client := ledgerClient(listen)
	const accounts = 8
	load := startDeposits(t, client, accounts)
	defer load.stop()

	// crashed waits until p, armed at point, killed itself there.
	crashed := func(p *process, point string) {
		t.Helper()
		select {
		case <-p.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("heed %s armed at %s did not crash within 60s\nstderr:\n%s", p.cmd.Args[1], point, p.stderr.String())
		}
		if !strings.Contains(p.stderr.String(), "failpoint "+point+": crashing") || p.err == nil || !strings.Contains(p.err.Error(), "killed") {
			t.Fatalf("heed %s exited with %v, want a crash at %s\nstderr:\n%s", p.cmd.Args[1], p.err, point, p.stderr.String())
		}
	}

	apply.interrupt(t)
	for _, point := range []string{"apply/after-lookup", "apply/before-commit", "apply/after-commit"} {
		armed := startApply("HEED_FAILPOINTS=" + point + "=crash@3")
		crashed(armed, point)
	}
	// A member armed at revocation, then a second member: the rebalance
	// revokes partitions from the first, which crashes there.
	armed := startApply("HEED_FAILPOINTS=apply/revoke=crash")
	apply = startApply()
	crashed(armed, "apply/revoke")

	// The server crashes after a produce was acknowledged, before it answers:
	// the caller retries the same request ID on the next server.
	serve.interrupt(t)
	armedServe := startServe("HEED_FAILPOINTS=ingest/after-produce=crash@20")
	crashed(armedServe, "ingest/after-produce")
	serve = startServe()
	time.Sleep(time.Second)

	acked := load.stop()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	admin, err := kgo.NewClient(kgo.SeedBrokers(brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	waitDepositsApplied(t, pool, accounts, acked, 60*time.Second)
	ends, err := kadm.NewClient(admin).ListEndOffsets(t.Context(), defaultTopic)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		var behind []string
		ends.Each(func(o kadm.ListedOffset) {
			var next int64
			if err := pool.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM heed.applied_positions WHERE topic = $1 AND partition = $2`, defaultTopic, o.Partition).Scan(&next); err != nil {
				behind = append(behind, err.Error())
			} else if next != o.Offset {
				behind = append(behind, fmt.Sprintf("partition %d at %d of %d", o.Partition, next, o.Offset))
			}
		})
		return strings.Join(behind, "; ")
	})
	var quarantined int64
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM heed.quarantine`).Scan(&quarantined); err != nil || quarantined != 0 {
		t.Errorf("the quarantine holds %d records (%v), want none: nothing was poisoned", quarantined, err)
	}
	t.Logf("%d deposits acknowledged through five crashes at failpoints; each applied once", acked)
	_, _ = serve, apply
}
