package cli

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestDocsMatchMetrics checks what docs/ says about metrics against what a
// running heed dev (serve, apply and the relay in one process) exports on
// /metrics: every metric name in every query of the Grafana dashboard
// (docs/grafana-dashboard.json) and every rule of docs/alerts.yml is
// exported, and docs/OPERATIONS.md's metrics table lists exactly the
// exported heed_* families, each with its type.
func TestDocsMatchMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev with its embedded broker")
	}
	a := freeDevAddrs(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	runHeed(t, "metrics   http://", append(devArgs(a, t.TempDir(), testenv.PostgresURL(t)), "--metrics-listen", metrics)...)
	c := ledgerClient(a.listen)
	ctx := t.Context()
	if _, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "open", AccountId: "acct"})); err != nil {
		t.Fatal(err)
	}
	r, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "d", AccountId: "acct", Amount: 1}))
	if err != nil {
		t.Fatal(err)
	}
	if got := balance(t, c, "acct", r.Msg.GetConsistencyToken()); got != 1 {
		t.Fatalf("balance %d, want 1", got)
	}
	fams := scrape(t, metrics)
	exported := exportedNames(fams)

	t.Run("dashboard", func(t *testing.T) {
		queries := dashboardQueries(t, "../docs/grafana-dashboard.json")
		if len(queries) < 20 {
			t.Fatalf("the dashboard has %d queries: the parser missed some", len(queries))
		}
		checkQueries(t, "docs/grafana-dashboard.json", queries, exported)
	})
	t.Run("alerts", func(t *testing.T) {
		checkQueries(t, "docs/alerts.yml", alertQueries(t, "../docs/alerts.yml"), exported)
	})
	t.Run("operations", func(t *testing.T) {
		checkOperationsTable(t, "../docs/OPERATIONS.md", fams)
	})
}

// exportedNames are the names a query can select from fams: each family's
// name and, for a histogram, its _bucket, _count and _sum series; and up,
// which Prometheus records for every target it scrapes.
func exportedNames(fams map[string]*dto.MetricFamily) map[string]bool {
	names := map[string]bool{"up": true}
	for name, f := range fams {
		names[name] = true
		if f.GetType() == dto.MetricType_HISTOGRAM {
			for _, s := range []string{"_bucket", "_count", "_sum"} {
				names[name+s] = true
			}
		}
	}
	return names
}

// checkQueries fails for each query that selects no metric or a metric not
// in exported.
func checkQueries(t *testing.T, file string, queries []string, exported map[string]bool) {
	t.Helper()
	if len(queries) == 0 {
		t.Fatalf("%s: no query found", file)
	}
	for _, q := range queries {
		names := promqlMetrics(q)
		if len(names) == 0 {
			t.Errorf("%s: the query %q selects no metric (or the test's PromQL reader missed it)", file, q)
		}
		for _, n := range names {
			if !exported[n] {
				t.Errorf("%s: the query %q uses %s, which heed does not export", file, q, n)
			}
		}
	}
}

// dashboardQueries returns every PromQL query of a Grafana dashboard: its
// panels' targets (rows' panels included) and its query variables.
func dashboardQueries(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string `json:"title"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
		Panels []json.RawMessage `json:"panels"`
	}
	var d struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Type  string          `json:"type"`
				Query json.RawMessage `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var queries []string
	var walk func(ps []json.RawMessage)
	walk = func(ps []json.RawMessage) {
		for _, raw := range ps {
			var p panel
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			for _, tg := range p.Targets {
				if tg.Expr == "" {
					t.Errorf("%s: panel %q has a target without a query", path, p.Title)
				}
				queries = append(queries, tg.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	labelValues := regexp.MustCompile(`^label_values\(\s*([^,]+?)\s*,\s*\w+\s*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q string
		if json.Unmarshal(v.Query, &q) != nil {
			var obj struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &obj); err != nil {
				t.Fatalf("%s: a variable's query: %v", path, err)
			}
			q = obj.Query
		}
		if m := labelValues.FindStringSubmatch(q); m != nil { // Grafana's, not PromQL: its first argument is
			q = m[1]
		}
		queries = append(queries, q)
	}
	return queries
}

// alertQueries returns the expressions of the rules of a Prometheus rules
// file.
func alertQueries(t *testing.T, path string) []string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []struct {
				Expr string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(raw, &f); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var queries []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			queries = append(queries, r.Expr)
		}
	}
	return queries
}

var (
	promqlStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	promqlRanges    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promqlGroupings = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promqlIdents    = regexp.MustCompile(`\$?\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(\s*\()?`)
	promqlKeywords  = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan", "atan2"}
)

// promqlMetrics returns the metric names a PromQL expression selects: its
// identifiers outside strings, label matchers, ranges and grouping clauses
// that are neither functions, keywords nor Grafana variables.
func promqlMetrics(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlMatchers.ReplaceAllString(e, "{}")
	e = promqlRanges.ReplaceAllString(e, "[]")
	e = promqlGroupings.ReplaceAllString(e, " ")
	var names []string
	for _, m := range promqlIdents.FindAllStringSubmatch(e, -1) {
		id := strings.TrimSpace(m[0])
		if m[1] != "" || strings.HasPrefix(id, "$") || slices.Contains(promqlKeywords, strings.ToLower(id)) {
			continue // a function, a Grafana variable or a keyword
		}
		names = append(names, id)
	}
	return names
}

// TestPromQLMetrics: the test's PromQL reader finds the metrics of the
// shapes docs/ uses, and nothing else.
func TestPromQLMetrics(t *testing.T) {
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`heed_applier_lag_records`, []string{"heed_applier_lag_records"}},
		{`sum by (topic) (max by (topic, partition) (heed_applier_lag_records{topic="$topic"})) > 1000`, []string{"heed_applier_lag_records"}},
		{`histogram_quantile(0.99, sum by (le) (rate(heed_rpc_duration_seconds_bucket[$__rate_interval])))`, []string{"heed_rpc_duration_seconds_bucket"}},
		{`absent(heed_x) or sum(heed_x) == 0`, []string{"heed_x", "heed_x"}},
		{`up{job=~"heed.*"} == 0`, []string{"up"}},
		{`sum(rate(a_total[5m] offset 1h)) / on (instance) group_left (job) b`, []string{"a_total", "b"}},
		{`heed_quarantine_records{kind="poison",state="open"} > 0`, []string{"heed_quarantine_records"}},
	} {
		if got := promqlMetrics(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("promqlMetrics(%q) = %q, want %q", c.expr, got, c.want)
		}
	}
}

// checkOperationsTable checks the metrics table of docs/OPERATIONS.md (its
// rows from "| `heed_..." up to the next heading) against fams: each name
// (or name_* pattern) is exported, with the type the row says, and every
// exported heed_* family has its row.
func checkOperationsTable(t *testing.T, path string, fams map[string]*dto.MetricFamily) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(raw)
	start := strings.Index(doc, "\n## Metrics\n")
	if start < 0 {
		t.Fatalf("%s has no ## Metrics section", path)
	}
	section := doc[start+1:]
	if end := strings.Index(section, "\n##"); end >= 0 {
		section = section[:end]
	}
	typeName := map[dto.MetricType]string{dto.MetricType_COUNTER: "counter", dto.MetricType_GAUGE: "gauge", dto.MetricType_HISTOGRAM: "histogram"}
	covered := map[string]bool{}
	rows := 0
	for _, line := range strings.Split(section, "\n") {
		if !strings.HasPrefix(line, "| `") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 4 {
			t.Errorf("%s: a row with too few cells: %s", path, line)
			continue
		}
		rows++
		types := strings.TrimSpace(cells[2])
		for _, name := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(cells[1], -1) {
			pattern := name[1]
			matched := 0
			for fname, f := range fams {
				if fname != pattern && !(strings.HasSuffix(pattern, "*") && strings.HasPrefix(fname, strings.TrimSuffix(pattern, "*"))) {
					continue
				}
				matched++
				covered[fname] = true
				if types != "" && !strings.Contains(types, typeName[f.GetType()]) {
					t.Errorf("%s: %s is a %s, the row of %s says %q", path, fname, typeName[f.GetType()], pattern, types)
				}
			}
			if matched == 0 {
				t.Errorf("%s lists %s, which heed does not export", path, pattern)
			}
		}
	}
	if rows < 10 {
		t.Fatalf("%s: %d rows in the metrics table: the reader missed it", path, rows)
	}
	for name := range fams {
		if strings.HasPrefix(name, "heed_") && !covered[name] {
			t.Errorf("heed exports %s, which %s's metrics table does not list", name, path)
		}
	}
}
