package cli

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestScaleOut is issue 21's multi-process run on one machine: two heed
// serve and three heed apply processes against the embedded broker and
// Postgres, the load spread over both servers; mid-run one applier is
// SIGKILLed and a fourth joins. In the end every acknowledged deposit is
// applied exactly once.
func TestScaleOut(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin)
	listens := []string{ps.listen, fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))}
	for _, l := range listens {
		startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", l}, ps.common...)...)
	}
	var applies []*process
	startApply := func() *process {
		p := startHeedLog(t, bin, "applier started", append([]string{"apply"}, ps.common...)...)
		applies = append(applies, p)
		return p
	}
	for range 3 {
		startApply()
	}

	const accounts = 16
	first := ledgerClient(listens[0])
	a := startDeposits(t, first, accounts)
	b := startLoadPrefix(ledgerClient(listens[1]), "second", accounts, 4)
	defer a.stop()
	defer b.stop()

	time.Sleep(2 * time.Second)
	applies[1].kill(t)
	time.Sleep(2 * time.Second)
	startApply()
	time.Sleep(3 * time.Second)
	acked := a.stop() + b.stop()
	if acked == 0 {
		t.Fatal("no deposit was acknowledged")
	}
	pool, err := pgxpool.New(t.Context(), ps.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	began := time.Now()
	waitDepositsApplied(t, pool, accounts, acked, 90*time.Second)
	var members int64
	if err := pool.QueryRow(t.Context(), `SELECT count(DISTINCT partition) FROM heed.applied_positions WHERE next_offset > 0`).Scan(&members); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d deposits over two servers, through an applier SIGKILLed and one added, each applied once (%d partitions used); caught up %v after the load stopped",
		acked, members, time.Since(began).Round(100*time.Millisecond))
}
