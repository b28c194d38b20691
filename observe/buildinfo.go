package observe

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/heed-dev/heed/internal/buildinfo"
)

// buildInfo is heed_build_info: always 1, its labels the binary's version,
// revision and Go version (`heed version` prints the same), so a dashboard
// can tell which build each process runs and when a rollout reached it.
func buildInfo() prometheus.Collector {
	i := buildinfo.Get()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "heed_build_info",
		Help:        "The running binary's version, revision and Go version (always 1).",
		ConstLabels: prometheus.Labels{"version": i.Version, "revision": i.Revision, "goversion": i.GoVersion}})
	g.Set(1)
	return g
}
