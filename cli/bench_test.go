package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestBenchBinaryJSON runs the built `heed bench --json` at a small size, all
// phases including rss (which runs `heed apply` as a child process): it must
// exit 0 and print one JSON object with every documented key measured (the
// transfers' rate counting two records per settled transfer), and write a CPU
// profile whose samples are labelled by phase and ingest handler.
func TestBenchBinaryJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	dbURL := testenv.PostgresURL(t)
	bin := testenv.BuildHeed(t)
	goBin := testenv.LookPath(t, "go") // go tool pprof reads the profile
	prof := filepath.Join(t.TempDir(), "cpu.prof")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "bench", "--json",
		"--database-url", dbURL,
		"--events", "2000", "--accounts", "100", "--naive-events", "300",
		"--clients", "8", "--duration", "300ms", "--rate", "300",
		"--rss-events", "20000", "--transfers", "500", "--cpuprofile", prof,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("heed bench: %v\nstderr:\n%s", err, stderr.String())
	}
	var got map[string]any
	if err := json.Unmarshal(stdout.Bytes(), &got); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout.String())
	}
	for _, key := range []string{
		"peer_batched_events_per_s", "floor_events_per_s", "applier_events_per_s", "naive_events_per_s",
		"applier_to_peer_batched_ratio", "applier_to_floor_ratio", "ordered_ids_applier_events_per_s", "ordered_ids_floor_events_per_s",
		"ingest_rps", "noop_rps", "ingest_p99_ms", "e2e_p50_ms", "e2e_p99_ms", "rss_peak_mib", "rss_events_per_s",
		"ingest_cpu_us_per_command", "noop_cpu_us_per_command", "ingest_records_per_produce_request",
		"applier_cpu_us_per_event", "transfers_per_s", "transfer_events_per_s", "transfer_events_to_drain_ratio",
		"transfer_cross_partition_share", "consumer_batched_events_per_s", "consumer_floor_events_per_s",
		"applier_to_consumer_batched_ratio", "applier_to_consumer_floor_ratio", "consumer_batched_cpu_us_per_record",
	} {
		v, ok := got[key].(float64)
		if !ok || v <= 0 {
			t.Errorf("%s = %v, want a positive number", key, got[key])
		}
	}
	if n, _ := got["transfers"].(float64); n != 500 {
		t.Errorf("transfers = %v, want 500", got["transfers"])
	}
	if tps, eps := got["transfers_per_s"], got["transfer_events_per_s"]; tps == nil || eps != 2*tps.(float64) {
		t.Errorf("transfer_events_per_s = %v, want twice transfers_per_s %v (a debit and a credit each)", eps, tps)
	}
	if n, _ := got["transfer_relayed"].(float64); n < 500 {
		t.Errorf("transfer_relayed = %v, want a credit per transfer at least", got["transfer_relayed"])
	}
	if n, _ := got["rss_events"].(float64); n != 20100 {
		t.Errorf("rss_events = %v, want 20100 (100 opens, 20,000 deposits)", got["rss_events"])
	}
	for _, key := range []string{"peer_batched_runs_events_per_s", "floor_runs_events_per_s", "consumer_batched_runs_events_per_s", "consumer_floor_runs_events_per_s"} {
		if runs, _ := got[key].([]any); len(runs) != 2 {
			t.Errorf("%s = %v, want 2 runs (before and after the drain)", key, got[key])
		}
	}
	if q, _ := got["rss_mib_at_25_50_75_100_pct"].([]any); len(q) != 4 {
		t.Errorf("rss_mib_at_25_50_75_100_pct = %v, want 4 samples", got["rss_mib_at_25_50_75_100_pct"])
	}

	tags, err := exec.CommandContext(ctx, goBin, "tool", "pprof", "-tags", bin, prof).CombinedOutput()
	if err != nil {
		t.Fatalf("go tool pprof -tags: %v\n%s", err, tags)
	}
	// Ingest keeps both cores busy for a second in all: hundreds of samples.
	for _, label := range []string{"phase", "ingest", "handler", "noop", "deposit"} {
		if !strings.Contains(string(tags), ": "+label+"\n") && !strings.Contains(string(tags), " "+label+":") {
			t.Errorf("the CPU profile has no %q label:\n%s", label, tags)
		}
	}
}
