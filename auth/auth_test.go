package auth_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/auth"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestTokens(t *testing.T) {
	tok, line, err := auth.NewToken("ci runner")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, auth.TokenPrefix) || strings.Contains(line, tok) || !strings.HasSuffix(line, " ci-runner") {
		t.Fatalf("NewToken = %q, %q: want a heed_ token and a line with its hash, not the token, and the name", tok, line)
	}
	path := filepath.Join(t.TempDir(), "tokens")
	write(t, path, "# comment\n\n"+line+"\n")
	ts, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if name, ok := ts.Check(tok); !ok || name != "ci-runner" {
		t.Errorf("Check(token) = %q, %v", name, ok)
	}
	if _, ok := ts.Check(tok + "x"); ok {
		t.Errorf("a wrong token is admitted")
	}

	for _, bad := range []struct{ content, want string }{
		{"", "admits no token"},
		{"not-a-hash\n", "want a SHA-256 in hex"},
		{tok + "\n", "a token itself, not its hash"},
	} {
		write(t, path, bad.content)
		if _, err := auth.Load(path, nil); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("Load(%q) = %v, want %q", bad.content, err, bad.want)
		}
	}
}

// TestGuardAndReload: the guard answers unauthenticated without an admitted
// token and passes the request on with one; a changed file is reloaded, a
// malformed one keeps the tokens admitted before.
func TestGuardAndReload(t *testing.T) {
	tok1, line1, _ := auth.NewToken("")
	tok2, line2, _ := auth.NewToken("")
	path := filepath.Join(t.TempDir(), "tokens")
	write(t, path, line1+"\n")
	ts, err := auth.Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	go ts.Watch(t.Context(), 20*time.Millisecond)
	var refused []string
	h := auth.Guard(ts, nil, func(p string) { refused = append(refused, p) })(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(204) }))
	call := func(token string) int {
		r := httptest.NewRequest("POST", "/heed.ledger.v1.LedgerService/Deposit", strings.NewReader("{}"))
		r.Header.Set("Content-Type", "application/json")
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code
	}
	if code := call(""); code != 401 {
		t.Errorf("no token: HTTP %d, want 401 (unauthenticated)", code)
	}
	if code := call(tok1); code != 204 {
		t.Errorf("admitted token: HTTP %d", code)
	}
	if len(refused) != 1 || refused[0] != "/heed.ledger.v1.LedgerService/Deposit" {
		t.Errorf("refused = %v", refused)
	}
	time.Sleep(20 * time.Millisecond) // a new modification time
	write(t, path, line2+"\n")
	deadline := time.Now().Add(5 * time.Second)
	for call(tok2) != 204 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if call(tok2) != 204 || call(tok1) != 401 {
		t.Fatalf("after the reload: token 2 %d (want 204), token 1 %d (want 401)", call(tok2), call(tok1))
	}
	write(t, path, "garbage\n")
	time.Sleep(200 * time.Millisecond)
	if call(tok2) != 204 {
		t.Errorf("a malformed file dropped the tokens admitted before")
	}
}
