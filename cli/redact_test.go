package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heed-dev/heed/auth"
)

// TestLogsRedactSecrets: a password in a URL (as a string or inside an
// error) and attributes named like secrets never reach the log; JSON when
// the output is not a terminal.
func TestLogsRedactSecrets(t *testing.T) {
	var buf bytes.Buffer
	l := logFlags{level: "info", format: "auto"}
	logger, err := l.logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	logger.Info("connecting", "url", "postgres://heed:hunter2@db:5432/heed", "kafka_password", "hunter3", "token", "heed_abc",
		"err", errors.New("dial postgres://heed:hunter4@db:5432/heed: refused"), "partition", 3, "consistency_token", "3:17")
	out := buf.String()
	for _, secret := range []string{"hunter2", "hunter3", "hunter4", "heed_abc"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log holds %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{`"msg":"connecting"`, "postgres://heed:REDACTED@db:5432/heed", `"partition":3`, `"consistency_token":"3:17"`} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %s:\n%s", want, out)
		}
	}
}

// TestTokensFileLogged: the line that says RPCs need a token shows the
// tokens file's path and how many tokens it admits (neither is a secret),
// and no token.
func TestTokensFileLogged(t *testing.T) {
	token, line, err := auth.NewToken("ops")
	if err != nil {
		t.Fatal(err)
	}
	_, line2, err := auth.NewToken("other")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(path, []byte(line+"\n"+line2+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	logger, err := (&logFlags{level: "info", format: "json"}).logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serverSecurityOf(t.Context(), authFlags{tokensFile: path}, "127.0.0.1:0", nil, logger); err != nil {
		t.Fatal(err)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(strings.SplitN(buf.String(), "\n", 2)[0]), &first); err != nil {
		t.Fatalf("first log line: %v\n%s", err, buf.String())
	}
	if first["msg"] != "RPCs need a bearer token" || first["path"] != path || first["admitted"] != 2.0 {
		t.Errorf("first log line %v, want the message, path %s and admitted 2", first, path)
	}
	if out := buf.String(); strings.Contains(out, "REDACTED") || strings.Contains(out, token) {
		t.Errorf("the log hides what is not secret, or shows the token:\n%s", out)
	}
}
