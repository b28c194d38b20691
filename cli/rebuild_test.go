package cli

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestRebuildVerb drives heed rebuild as a user would, against broker, serve
// and apply processes under a steady load: a rebuild SIGKILLed by a
// failpoint mid-replay resumes where it stopped, --verify finds it equal to
// the live projection, --swap makes it live while serve and apply keep
// running, a second --swap is refused before it replays anything, and
// --drop-old drops the retired projection. Every acknowledged deposit is
// applied once in the end.
func TestRebuildVerb(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t, "failpoints")
	ps := startParts(t, bin, "--partitions", "4")
	dbURL, listen, common := ps.dbURL, ps.listen, ps.common
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", listen}, common...)...)
	apply := startHeedLog(t, bin, "partitions assigned", append([]string{"apply"}, common...)...)

	const accounts = 8
	load := startDeposits(t, ledgerClient(listen), accounts)
	defer load.stop()
	time.Sleep(2 * time.Second)

	rebuild := append([]string{"rebuild", "--batch-records", "20"}, common...)
	// Killed after its third batch committed: nothing of it is lost, the
	// next run resumes.
	crashed := runToolEnv(t, []string{"HEED_FAILPOINTS=apply/after-commit=crash@3"}, time.Minute, true, bin, rebuild...)
	if !strings.Contains(crashed, "failpoint") {
		t.Fatalf("the armed rebuild did not stop at its failpoint:\n%s", crashed)
	}
	out := runTool(t, 2*time.Minute, false, bin, append(rebuild, "--verify", "--log-level", "info")...)
	if !strings.Contains(out, "verified: heed_rebuild equals heed at positions") {
		t.Errorf("heed rebuild --verify:\n%s", out)
	}
	out = runTool(t, 2*time.Minute, false, bin, append(rebuild, "--verify", "--swap")...)
	if !strings.Contains(out, "swapped at positions") || !strings.Contains(out, "processed_events") {
		t.Errorf("heed rebuild --verify --swap:\n%s", out)
	}
	t.Logf("heed rebuild --verify --swap:\n%s", out)
	refused := runTool(t, time.Minute, true, bin, append(rebuild, "--swap")...)
	if !strings.Contains(refused, "schema heed_old exists already") || strings.Contains(refused, "rebuilt heed_rebuild") {
		t.Errorf("a second swap with heed_old in place: want a refusal before any replay, got:\n%s", refused)
	}
	time.Sleep(time.Second) // the load goes on, applied in the swapped-in schema

	acked := load.stop()
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// The deposits acknowledged after the swap were applied by the same
	// apply process, into the swapped-in schema: it followed the swap.
	waitDepositsApplied(t, pool, accounts, acked, 30*time.Second)
	if !apply.running() {
		t.Errorf("apply stopped across the swap:\n%s", apply.stderr.String())
	}
	out = runTool(t, time.Minute, false, bin, "rebuild", "--database-url", dbURL, "--drop-old")
	if !strings.Contains(out, "dropped schema heed_old") {
		t.Errorf("heed rebuild --drop-old: %s", out)
	}
	t.Logf("%d deposits acknowledged across a crashed rebuild, its resumption, a verify and a swap; each applied once", acked)
}
