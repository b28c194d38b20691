package ingest_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heed-dev/heed/auth"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

const pageOrigin = "http://page.test:5173"

// serveGuardedLedger serves the accepting ledger with CORS for origins behind
// auth.Guard, and returns its base URL and an admitted token.
func serveGuardedLedger(tb testing.TB, origins []string) (base, token string) {
	tb.Helper()
	token, line, err := auth.NewToken("page")
	if err != nil {
		tb.Fatal(err)
	}
	file := filepath.Join(tb.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(line+"\n"), 0o600); err != nil {
		tb.Fatal(err)
	}
	tokens, err := auth.Load(file, testenv.Logger(tb))
	if err != nil {
		tb.Fatal(err)
	}
	opts := []ingest.ServerOption{ingest.WithGuard(auth.Guard(tokens, testenv.Logger(tb), nil))}
	if origins != nil {
		opts = append(opts, ingest.WithCORS(origins))
	}
	return serveLedger(tb, opts), token
}

// preflight sends the OPTIONS request a browser sends before a Connect POST
// with a bearer token from origin to path.
func preflight(tb testing.TB, base, path, origin string) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodOptions, base+path, nil)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Origin", origin)
	req.Header.Set("Access-Control-Request-Method", "POST")
	req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("preflight: %v", err)
	}
	resp.Body.Close()
	return resp
}

// post sends a Connect JSON Deposit from origin, with token if not empty.
func post(tb testing.TB, base, origin, token string) *http.Response {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, base+depositPath, strings.NewReader(`{"requestId":"r1","accountId":"alice","amount":1}`))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Origin", origin)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Connect-Protocol-Version", "1")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("post: %v", err)
	}
	tb.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestCORSPreflight(t *testing.T) {
	base, _ := serveGuardedLedger(t, []string{pageOrigin, "https://*.example.com"})
	// CORS wraps every path, not only the ledger's: heed's CommandService and
	// other domains' services are mounted on the same mux.
	for _, path := range []string{depositPath, "/heed.command.v1.CommandService/GetCommandResult"} {
		for _, origin := range []string{pageOrigin, "https://shop.example.com"} {
			t.Run(origin+path, func(t *testing.T) {
				resp := preflight(t, base, path, origin)
				if resp.StatusCode != http.StatusNoContent {
					t.Fatalf("preflight status %d, want 204 (answered before the guard, without a token)", resp.StatusCode)
				}
				h := resp.Header
				if got := h.Get("Access-Control-Allow-Origin"); got != origin {
					t.Errorf("Access-Control-Allow-Origin %q, want %q", got, origin)
				}
				if got := h.Get("Access-Control-Allow-Methods"); got != "POST" {
					t.Errorf("Access-Control-Allow-Methods %q, want POST", got)
				}
				allowed := strings.ToLower(h.Get("Access-Control-Allow-Headers"))
				for _, want := range []string{"authorization", "connect-protocol-version", "content-type"} {
					if !strings.Contains(allowed, want) {
						t.Errorf("Access-Control-Allow-Headers %q lacks %s", allowed, want)
					}
				}
				if got := h.Get("Access-Control-Max-Age"); got != "7200" {
					t.Errorf("Access-Control-Max-Age %q, want 7200", got)
				}
				if got := h.Get("Access-Control-Allow-Credentials"); got != "" {
					t.Errorf("Access-Control-Allow-Credentials %q: tokens go in a header, no cookies are allowed", got)
				}
			})
		}
	}
}

func TestCORSRefusesOtherOrigins(t *testing.T) {
	base, token := serveGuardedLedger(t, []string{pageOrigin})
	for _, origin := range []string{"http://evil.test", "http://page.test:5174", "https://page.test:5173"} {
		t.Run(origin, func(t *testing.T) {
			resp := preflight(t, base, depositPath, origin)
			for _, k := range []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers"} {
				if got := resp.Header.Get(k); got != "" {
					t.Errorf("preflight from %s: %s %q, want none", origin, k, got)
				}
			}
			// A browser would not send the POST; sent anyway, its answer
			// carries nothing that lets a page read it.
			resp = post(t, base, origin, token)
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
				t.Errorf("POST from %s: Access-Control-Allow-Origin %q, want none", origin, got)
			}
		})
	}
}

func TestCORSPost(t *testing.T) {
	base, token := serveGuardedLedger(t, []string{pageOrigin})
	t.Run("with token", func(t *testing.T) {
		resp := post(t, base, pageOrigin, token)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d, want 200", resp.StatusCode)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != pageOrigin {
			t.Errorf("Access-Control-Allow-Origin %q, want %q", got, pageOrigin)
		}
		exposed := strings.ToLower(resp.Header.Get("Access-Control-Expose-Headers"))
		if !strings.Contains(exposed, "grpc-status") {
			t.Errorf("Access-Control-Expose-Headers %q lacks grpc-status (gRPC-Web clients read it)", exposed)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(body), `"eventId":"accepted"`) {
			t.Errorf("body %s, want the handler's answer", body)
		}
	})
	t.Run("refused by the guard", func(t *testing.T) {
		// The page must be able to read why it was refused.
		resp := post(t, base, pageOrigin, "")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", resp.StatusCode)
		}
		if got := resp.Header.Get("Access-Control-Allow-Origin"); got != pageOrigin {
			t.Errorf("Access-Control-Allow-Origin %q on the refusal, want %q", got, pageOrigin)
		}
	})
}

func TestCORSOffByDefault(t *testing.T) {
	base, token := serveGuardedLedger(t, nil)
	resp := preflight(t, base, depositPath, pageOrigin)
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("preflight without WithCORS: Access-Control-Allow-Origin %q, want none", got)
	}
	resp = post(t, base, pageOrigin, token)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST status %d, want 200 (non-browser clients are unaffected)", resp.StatusCode)
	}
	if got := resp.Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("POST without WithCORS: Access-Control-Allow-Origin %q, want none", got)
	}
}

func TestValidateOrigins(t *testing.T) {
	for _, tc := range []struct {
		name    string
		origins []string
		wantErr string
	}{
		{name: "none", origins: nil},
		{name: "any", origins: []string{"*"}},
		{name: "hosts and ports", origins: []string{"https://app.example.com", "http://localhost:5173", "http://127.0.0.1:8000", "http://[::1]:3000"}},
		{name: "wildcard", origins: []string{"https://*.example.com"}},
		{name: "trailing slash", origins: []string{"https://app.example.com/"}, wantErr: "use https://app.example.com"},
		{name: "path", origins: []string{"https://app.example.com/app"}, wantErr: "no path"},
		{name: "wildcard and path", origins: []string{"https://*.example.com/x"}, wantErr: "use https://*.example.com"},
		{name: "no scheme", origins: []string{"app.example.com"}, wantErr: "http:// or https://"},
		{name: "other scheme", origins: []string{"ftp://app.example.com"}, wantErr: "http:// or https://"},
		{name: "empty", origins: []string{""}, wantErr: "an empty origin"},
		{name: "two wildcards", origins: []string{"https://*.*.example.com"}, wantErr: "at most one * wildcard"},
		{name: "query", origins: []string{"https://app.example.com?x=1"}, wantErr: "no path"},
		{name: "user", origins: []string{"https://me@app.example.com"}, wantErr: "scheme://host[:port]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ingest.ValidateOrigins(tc.origins)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("ValidateOrigins(%q): %v, want nil", tc.origins, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("ValidateOrigins(%q): %v, want an error containing %q", tc.origins, err, tc.wantErr)
			}
		})
	}
}
