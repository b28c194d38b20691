package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/heed-dev/heed/auth"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/internal/testenv"
)

// scrape reads and parses /metrics with the Prometheus text parser.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer res.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(res.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return fams
}

// sample is the value of the series of family with the given labels (a
// counter, gauge or histogram's count), or -1 when there is none.
func sample(fams map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	f, ok := fams[family]
	if !ok {
		return -1
	}
	var total float64
	found := false
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range labels {
			has := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					has = true
				}
			}
			match = match && has
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Counter != nil:
			total += m.GetCounter().GetValue()
		case m.Gauge != nil:
			total += m.GetGauge().GetValue()
		case m.Histogram != nil:
			total += float64(m.GetHistogram().GetSampleCount())
		}
	}
	if !found {
		return -1
	}
	return total
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	res, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(body)
}

// bearerClient is a ledger client over TLS (trusting caFile) sending token.
func bearerClient(t *testing.T, addr, caFile string, token *string) ledgerv1connect.LedgerServiceClient {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}
	withToken := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if *token != "" {
				req.Header().Set("Authorization", "Bearer "+*token)
			}
			return next(ctx, req)
		}
	})
	return ledgerv1connect.NewLedgerServiceClient(hc, "https://"+addr, connect.WithInterceptors(withToken))
}

// TestOperations runs heed dev with TLS, bearer tokens and metrics, and
// checks each from outside: RPCs without a token, or with a wrong or revoked
// one, are unauthenticated, health is open; a token added to the file is
// admitted within the reload interval; /metrics parses and its series move
// under load; /healthz and /readyz answer.
func TestOperations(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev with its embedded broker")
	}
	certs := testenv.MakeCerts(t)
	first, firstLine, err := auth.NewToken("first")
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte("# admitted clients\n"+firstLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := freeDevAddrs(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	args := append(devArgs(a, t.TempDir(), testenv.PostgresURL(t)), "--metrics-listen", metrics,
		"--auth-tokens-file", tokens, "--tls-cert", certs.Cert, "--tls-key", certs.Key)
	out := runHeed(t, "metrics   http://", args...)
	if !strings.Contains(out, "server    https://") || !strings.Contains(out, "auth      bearer tokens from "+tokens) {
		t.Errorf("banner:\n%s", out)
	}
	ctx := t.Context()
	token := ""
	c := bearerClient(t, a.listen, certs.CA, &token)
	open := func(id string) error {
		_, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: id, AccountId: id}))
		return err
	}
	if err := open("no-token"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("without a token: %v, want unauthenticated", err)
	}
	token = "heed_wrong"
	if err := open("wrong-token"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("with a wrong token: %v, want unauthenticated", err)
	}
	token = first
	if err := open("acct"); err != nil {
		t.Fatalf("with the token: %v", err)
	}

	// Health stays open: the Connect protocol's JSON form of Check.
	pem, _ := os.ReadFile(certs.CA)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	res, err := hc.Post("https://"+a.listen+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "SERVING") {
		t.Errorf("health without a token: %d %s", res.StatusCode, body)
	}

	// Reload: a second token admitted, the first revoked.
	second, secondLine, _ := auth.NewToken("second")
	if err := os.WriteFile(tokens, []byte(secondLine+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token = second
	testenv.Eventually(t, 10*time.Second, func() string {
		if err := open("after-reload"); err != nil {
			return "the new token is not admitted yet: " + err.Error()
		}
		return ""
	})
	token = first
	if err := open("revoked"); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("with the revoked token: %v, want unauthenticated", err)
	}
	token = second

	// Metrics move under load.
	before := scrape(t, metrics)
	deposit := "/heed.ledger.v1.LedgerService/Deposit"
	var last *ledgerv1.DepositResponse
	for i := range 50 {
		r, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: fmt.Sprint("d", i), AccountId: "acct", Amount: 1}))
		if err != nil {
			t.Fatal(err)
		}
		last = r.Msg
	}
	if got := balance(t, c, "acct", last.GetConsistencyToken()); got != 50 {
		t.Fatalf("balance %d, want 50", got)
	}
	after := scrape(t, metrics)
	for _, s := range []struct {
		family  string
		labels  map[string]string
		atLeast float64
	}{
		{"heed_rpc_requests_total", map[string]string{"procedure": deposit, "code": "ok"}, 50},
		{"heed_rpc_duration_seconds", map[string]string{"procedure": deposit}, 50},
		{"heed_produce_duration_seconds", nil, 50},
		{"heed_apply_records_total", map[string]string{"outcome": "applied"}, 50},
		{"heed_apply_batch_duration_seconds", nil, 1},
	} {
		d := sample(after, s.family, s.labels) - max(sample(before, s.family, s.labels), 0)
		if d < s.atLeast {
			t.Errorf("%s%v moved by %v under 50 deposits, want at least %v", s.family, s.labels, d, s.atLeast)
		}
	}
	if n := sample(after, "heed_rpc_requests_total", map[string]string{"code": "unauthenticated"}); n < 3 {
		t.Errorf("heed_rpc_requests_total{code=unauthenticated} = %v, want the 3 refused requests", n)
	}
	for _, family := range []string{"heed_applier_lag_records", "heed_applier_stalled_partitions", "heed_applier_position", "heed_topic_end_offset", "heed_quarantine_records",
		"heed_db_pool_acquired_connections", "heed_apply_retries_total", "heed_relay_unsent_rows", "heed_relay_oldest_unsent_age_seconds", "heed_relay_produced_total", "heed_relay_failures_total", "heed_produce_errors_total", "go_goroutines", "process_resident_memory_bytes"} {
		if sample(after, family, nil) < 0 {
			t.Errorf("/metrics has no %s", family)
		}
	}
	// docs/alerts.yml and the dashboard are checked by TestDocsMatchMetrics.
	kafka := false
	for name := range after {
		kafka = kafka || strings.HasPrefix(name, "heed_kafka_")
	}
	if !kafka {
		t.Errorf("/metrics has no heed_kafka_* series (kprom)")
	}
	if code, body := get(t, "http://"+metrics+"/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	testenv.Eventually(t, 10*time.Second, func() string {
		code, body := get(t, "http://"+metrics+"/readyz")
		if code != 200 || !strings.Contains(body, "lag: ok") || !strings.Contains(body, "stalled: ok") || !strings.Contains(body, "topic: ok") {
			return fmt.Sprintf("/readyz: %d %s", code, body)
		}
		return ""
	})
}

// TestRPCLabelsBounded: thousands of requests to distinct paths, refused
// (no token, a wrong one) or admitted (the right token, to a path nothing
// serves), leave the number of heed_rpc_* series where it was: a client's URL
// path never becomes a label value; unknown procedures count as "unknown".
func TestRPCLabelsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev with its embedded broker")
	}
	token, line, err := auth.NewToken("labels")
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := freeDevAddrs(t)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	runHeed(t, "metrics   http://", append(devArgs(a, t.TempDir(), testenv.PostgresURL(t)), "--metrics-listen", metrics, "--auth-tokens-file", tokens)...)

	const deposit = "/heed.ledger.v1.LedgerService/Deposit"
	post := func(path, bearer string) int {
		req, err := http.NewRequest(http.MethodPost, "http://"+a.listen+path, strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res.StatusCode
	}
	// round sends n requests of each kind to paths named after round r.
	round := func(r, n int) {
		for i := range n {
			for _, p := range []string{fmt.Sprintf("/x/%d/%d", r, i), fmt.Sprintf("/heed.ledger.v1.LedgerService/Nope%d_%d", r, i)} {
				if code := post(p, ""); code != http.StatusUnauthorized {
					t.Fatalf("POST %s without a token: %d, want 401", p, code)
				}
				post(p, "heed_wrong")
				if code := post(p, token); code != http.StatusNotFound {
					t.Fatalf("POST %s with the token: %d, want 404", p, code)
				}
			}
			post(deposit, "")
		}
	}
	rpcSeries := func() (int, map[string]bool) {
		n, procs := 0, map[string]bool{}
		for name, f := range scrape(t, metrics) {
			for _, m := range f.GetMetric() {
				for _, lp := range m.GetLabel() {
					if strings.Contains(lp.GetValue(), "/x/") || strings.Contains(lp.GetValue(), "Nope") {
						t.Fatalf("%s has the label %s=%q: a client's path", name, lp.GetName(), lp.GetValue())
					}
					if strings.HasPrefix(name, "heed_rpc_") && lp.GetName() == "procedure" {
						procs[lp.GetValue()] = true
					}
				}
				if strings.HasPrefix(name, "heed_rpc_") {
					n++
				}
			}
		}
		return n, procs
	}
	const n = 1000
	round(1, n)
	first, procs := rpcSeries()
	round(2, n)
	second, _ := rpcSeries()
	if first != second {
		t.Errorf("heed_rpc_* series: %d after %d requests to distinct paths, %d after %d more", first, 5*n, second, 5*n)
	}
	if !procs["unknown"] || !procs[deposit] || len(procs) != 2 {
		t.Errorf("procedure label values %v, want exactly unknown and %s", procs, deposit)
	}
	if got := sample(scrape(t, metrics), "heed_rpc_requests_total", map[string]string{"procedure": "unknown", "code": "unauthenticated"}); got != 2*2*2*n {
		t.Errorf(`heed_rpc_requests_total{procedure="unknown",code="unauthenticated"} = %v, want %d`, got, 2*2*2*n)
	}
	t.Logf("%d requests to %d distinct paths: %d heed_rpc_* series", 2*5*n, 2*2*n, second)
}
