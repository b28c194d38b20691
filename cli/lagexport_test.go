package cli

import (
	"fmt"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestLagExportedWithoutApplier is issue 29's "no applier at all": with heed
// broker and heed serve alone, commands are acknowledged and wait, and
// serve's /metrics shows them as lag, without heed_applier_assigned_partitions
// (what HeedNoApplier watches). Then two appliers join: every process
// exports the same series per partition (so max by (topic, partition)
// counts each once, docs/OPERATIONS.md), the lag drains to 0 on all three,
// and the appliers' assigned partitions add up to the topic's.
func TestLagExportedWithoutApplier(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin)
	serveMetrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen, "--metrics-listen", serveMetrics}, ps.common...)...)
	c := ledgerClient(ps.listen)
	const commands = 50
	for i := range commands {
		id := fmt.Sprint("acct-", i)
		if _, err := c.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: id, AccountId: id})); err != nil {
			t.Fatal(err)
		}
	}
	fams := scrape(t, serveMetrics)
	if got := sample(fams, "heed_applier_lag_records", nil); got != commands {
		t.Errorf("serve's heed_applier_lag_records sum to %v with no applier, want %d", got, commands)
	}
	if got := sample(fams, "heed_positions_scrape_success", nil); got != 1 {
		t.Errorf("serve's heed_positions_scrape_success = %v, want 1", got)
	}
	if _, ok := fams["heed_applier_assigned_partitions"]; ok {
		t.Errorf("serve exports heed_applier_assigned_partitions: HeedNoApplier could not tell that no applier runs")
	}
	partitions := len(fams["heed_applier_lag_records"].GetMetric())

	addrs := []string{serveMetrics}
	for range 2 {
		m := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		startHeedLog(t, bin, "applier started", append([]string{"apply", "--metrics-listen", m}, ps.common...)...)
		addrs = append(addrs, m)
	}
	testenv.Eventually(t, 60*time.Second, func() string {
		var first map[string]float64
		assigned := 0.0
		for i, addr := range addrs {
			fams := scrape(t, addr)
			lag := bySeries(fams["heed_applier_lag_records"])
			if len(lag) != partitions {
				return fmt.Sprintf("%s exports %d lag series, want one per partition (%d)", addr, len(lag), partitions)
			}
			for series, v := range lag {
				if v != 0 {
					return fmt.Sprintf("%s: %s = %v, not drained yet", addr, series, v)
				}
			}
			if i == 0 {
				first = bySeries(fams["heed_applier_position"])
			} else if got := bySeries(fams["heed_applier_position"]); fmt.Sprint(got) != fmt.Sprint(first) {
				return fmt.Sprintf("positions differ between processes: %v and %v", first, got)
			}
			if i > 0 {
				n := sample(fams, "heed_applier_assigned_partitions", nil)
				if n < 0 {
					return addr + " (an applier) does not export heed_applier_assigned_partitions"
				}
				assigned += n
			}
		}
		if assigned != float64(partitions) {
			return fmt.Sprintf("the appliers own %v partitions in all, want %d", assigned, partitions)
		}
		return ""
	})
}

// bySeries maps each series of f, named by its labels, to its value.
func bySeries(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		out[fmt.Sprint(m.GetLabel())] = m.GetGauge().GetValue()
	}
	return out
}
