package observe_test

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/heed-dev/heed/internal/buildinfo"
	"github.com/heed-dev/heed/observe"
)

// TestBuildInfo: /metrics, parsed by the Prometheus text parser, has one
// heed_build_info series, 1, labelled with the version, revision and Go
// version `heed version` prints.
func TestBuildInfo(t *testing.T) {
	srv := httptest.NewServer(observe.Handler(observe.NewMetrics(), observe.NewHealth()))
	defer srv.Close()
	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	f, ok := fams["heed_build_info"]
	if !ok || len(f.GetMetric()) != 1 {
		t.Fatalf("/metrics: heed_build_info %v, want one series", f)
	}
	m := f.GetMetric()[0]
	if v := m.GetGauge().GetValue(); v != 1 {
		t.Errorf("heed_build_info = %v, want 1", v)
	}
	i := buildinfo.Get()
	want := map[string]string{"version": i.Version, "revision": i.Revision, "goversion": runtime.Version()}
	got := map[string]string{}
	for _, l := range m.GetLabel() {
		got[l.GetName()] = l.GetValue()
	}
	if len(got) != len(want) {
		t.Errorf("heed_build_info labels %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v || v == "" {
			t.Errorf("heed_build_info{%s=%q}, want %q (non-empty)", k, got[k], v)
		}
	}
}
