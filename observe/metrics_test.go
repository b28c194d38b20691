package observe_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/observe"
)

// Refused requests count under their procedure only when it is one the
// server serves (from the service's descriptor); any other path counts as
// unknown, so clients cannot add series.
func TestRefusedProcedureBounded(t *testing.T) {
	m := observe.NewMetrics()
	m.Services(ledgerv1connect.LedgerServiceName, "no.such.Service")
	for _, p := range []string{ledgerv1connect.LedgerServiceDepositProcedure, "/x/1", "/x/2", "/heed.ledger.v1.LedgerService/Nope", "/no.such.Service/Do", ""} {
		m.Refused(p, connect.CodeUnauthenticated)
	}
	got := map[string]float64{}
	fams, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != "heed_rpc_requests_total" {
			continue
		}
		for _, s := range f.GetMetric() {
			got[label(s, "procedure")+" "+label(s, "code")] = s.GetCounter().GetValue()
		}
	}
	want := map[string]float64{ledgerv1connect.LedgerServiceDepositProcedure + " unauthenticated": 1, "unknown unauthenticated": 5}
	if len(got) != len(want) {
		t.Fatalf("series %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("series %v, want %v", got, want)
		}
	}
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// What /metrics serves passes promlint for heed's own and the Kafka
// client's families: no gauge named like a counter (kprom names its
// buffered-record gauges ..._total; the gatherer corrects them).
func TestMetricsLint(t *testing.T) {
	m := observe.NewMetrics()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers("127.0.0.1:1")}, m.KafkaOpts("producer")...)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	m.WatchAssignment(func() []int32 { return []int32{0, 1} })
	m.WatchStalls(func() []applier.Stall { return nil })
	m.WatchHealth(observe.NewHealth(observe.Check{Name: "database", Fn: func(context.Context) error { return errors.New("down") }},
		observe.Check{Name: "broker", Fn: func(context.Context) error { return nil }}))
	fams, err := m.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		names[f.GetName()] = f
	}
	for _, want := range []string{"heed_kafka_buffered_produce_records", "heed_kafka_buffered_fetch_records", "heed_applier_assigned_partitions", "heed_readiness_check_success"} {
		if names[want] == nil {
			t.Errorf("no %s", want)
		}
	}
	for _, f := range names["heed_readiness_check_success"].GetMetric() {
		if want := map[string]float64{"database": 0, "broker": 1}[label(f, "check")]; f.GetGauge().GetValue() != want {
			t.Errorf("heed_readiness_check_success{check=%q} = %v, want %v", label(f, "check"), f.GetGauge().GetValue(), want)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(fams).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "heed_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}
