package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestTopicChecksUnderLoadProcesses is issue 26's reproduction of holes 4 and
// 5 with processes: `heed broker`, `heed serve` and `heed apply` under a
// steady load of deposits. A second `heed apply` started six times (each start
// checks the topic, and each join and leave is a rebalance on which the
// running apply checks again) never exits refusing "ahead of the topic";
// `heed audit` run five times exits 0 every time; serve never refuses
// commands; and every acknowledged deposit is applied once.
func TestTopicChecksUnderLoadProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin, "--partitions", "4")
	serve := startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen}, ps.common...)...)
	apply := startHeedLog(t, bin, "partitions assigned", append([]string{"apply"}, ps.common...)...)
	const accounts = 8
	load := startDeposits(t, ledgerClient(ps.listen), accounts)
	defer load.stop()
	time.Sleep(time.Second)

	for range 6 {
		second := startHeedLog(t, bin, "partitions assigned", append([]string{"apply"}, ps.common...)...)
		time.Sleep(time.Second)
		terminate(t, second, 1)
	}
	for range 5 {
		runTool(t, 2*time.Minute, false, bin, append([]string{"audit"}, ps.common...)...)
	}
	if !apply.running() {
		t.Fatalf("the first apply stopped under load: %v\nstderr:\n%s", apply.err, apply.stderr.String())
	}
	if log := serve.stderr.String(); strings.Contains(log, "refusing commands") {
		t.Errorf("serve refused commands under load:\n%s", log)
	}
	acked := load.stop()
	if acked == 0 {
		t.Fatal("the load got no deposit acknowledged")
	}
	pool, err := pgxpool.New(t.Context(), ps.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	waitDepositsApplied(t, pool, accounts, acked, 30*time.Second)
	t.Logf("%d deposits acknowledged through six starts of a second apply and five audits", acked)
}
