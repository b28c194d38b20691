package cli

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/heed-dev/heed/auth"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestDevBannerWithTLSAndTokens: with TLS and bearer tokens on, the commands
// heed dev's banner suggests work as printed (no -plaintext, a token sent
// from $HEED_TOKEN): each one, run by a shell with grpcurl, is answered.
// Checked: the banner left as it was fails here (-plaintext, no token), and
// so do commands grpcurl cannot run.
func TestDevBannerWithTLSAndTokens(t *testing.T) {
	grpcurl := testenv.LookPath(t, "grpcurl")
	certs := testenv.MakeCerts(t)
	token, line, err := auth.NewToken("banner")
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := freeDevAddrs(t)
	args := append(devArgs(a, t.TempDir(), testenv.PostgresURL(t)), "--metrics-listen", "",
		"--auth-tokens-file", tokens, "--tls-cert", certs.Cert, "--tls-key", certs.Key)
	out := runHeed(t, "GetAccount", args...)
	var cmds []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "grpcurl ") {
			cmds = append(cmds, l)
		}
	}
	if len(cmds) != 2 || !strings.Contains(out, "HEED_TOKEN is a token") {
		t.Fatalf("banner: want two grpcurl commands and a note on HEED_TOKEN:\n%s", out)
	}
	for _, c := range cmds {
		if strings.Contains(c, "-plaintext") || !strings.Contains(c, "$HEED_TOKEN") {
			t.Errorf("banner command %q: want TLS (no -plaintext) and the token", c)
		}
		cmd := exec.CommandContext(t.Context(), "sh", "-c", strings.Replace(c, "grpcurl ", grpcurl+" ", 1))
		cmd.Env = append(os.Environ(), "HEED_TOKEN="+token)
		got, err := cmd.CombinedOutput()
		// GetAccount may come before the account is applied: NotFound is
		// an answer too. Not an answer: Unauthenticated, a TLS failure.
		if err != nil && !strings.Contains(string(got), "Code: NotFound") {
			t.Errorf("%s: %v\n%s", c, err, got)
		}
	}
}
