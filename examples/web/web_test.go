// Package webtest drives the web example (examples/web) in headless Chromium
// against a real `heed dev`: the page, served from another origin than heed,
// opens an account, deposits and reads the balance with the consistency token
// over Connect, which works only because heed answers CORS for that origin.
package webtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/heed-dev/heed/auth"
	"github.com/heed-dev/heed/internal/testenv"
)

// serverLine is the line of heed dev's banner that says the server is up.
const serverLine = "  server    http://"

func TestMain(m *testing.M) { testenv.RunWithoutMetrics(m) }

// TestBrowser builds the page, starts heed dev with a tokens file and
// --cors-allowed-origins naming the page's origin, and runs the page in
// headless Chromium: from the allowed origin with a token it shows the
// balance it deposited and the deposit applied; without a token it shows
// heed's refusal (readable because the refusal carries the CORS headers too);
// from an origin heed does not list, the browser itself refuses the answer.
func TestBrowser(t *testing.T) {
	chromium := findChromium(t)
	page := buildPage(t)
	heedBin := testenv.BuildHeed(t)

	token, line, err := auth.NewToken("web-example")
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(tokens, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The page on 127.0.0.1:<port>; heed on another port: another origin.
	pageLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pageSrv := httptest.NewUnstartedServer(http.FileServer(http.Dir(page)))
	pageSrv.Listener.Close()
	pageSrv.Listener = pageLn
	pageSrv.Start()
	t.Cleanup(pageSrv.Close)
	pagePort := pageLn.Addr().(*net.TCPAddr).Port
	allowed := fmt.Sprintf("http://127.0.0.1:%d", pagePort)
	// The same page, reached by another name: an origin heed does not list.
	other := fmt.Sprintf("http://localhost:%d", pagePort)

	listen := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	startHeedDev(t, heedBin, "--data-dir", t.TempDir(), "--listen", listen,
		"--broker-listen", fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		"--database-url", testenv.PostgresURL(t), "--metrics-listen", "", "--log-level", "warn",
		"--auth-tokens-file", tokens, "--cors-allowed-origins", allowed)
	heedURL := "http://" + listen

	browser := newBrowser(t, chromium)

	t.Run("allowed origin", func(t *testing.T) {
		got := runPage(t, browser, allowed, heedURL, token, "web-alice", "250")
		if got.State != "done" || got.Balance != "250" || got.Status != "deposit APPLIED" {
			t.Fatalf("page shows state %q, balance %q, status %q; want done, 250, deposit APPLIED\nlog:\n%s", got.State, got.Balance, got.Status, got.Log)
		}
		// The page's log shows each step; the token it read with came from the deposit.
		for _, want := range []string{"OpenAccount: event ", "Deposit 250: event ", "consistency token ", "GetAccount: balance 250", "GetCommandResult: APPLIED", "the deposit's result: balance after 250"} {
			if !strings.Contains(got.Log, want) {
				t.Errorf("page log lacks %q:\n%s", want, got.Log)
			}
		}
	})
	t.Run("allowed origin, second deposit", func(t *testing.T) {
		// The account exists: OpenAccount is rejected, the deposit adds up.
		got := runPage(t, browser, allowed, heedURL, token, "web-alice", "100")
		if got.State != "done" || got.Balance != "350" {
			t.Fatalf("page shows state %q, balance %q, status %q; want done, 350\nlog:\n%s", got.State, got.Balance, got.Status, got.Log)
		}
	})
	t.Run("allowed origin without token", func(t *testing.T) {
		got := runPage(t, browser, allowed, heedURL, "", "web-bob", "5")
		if got.State != "error" || !strings.Contains(got.Status, "missing or unknown bearer token") {
			t.Fatalf("page shows state %q, status %q; want error and heed's unauthenticated message", got.State, got.Status)
		}
	})
	t.Run("origin not allowed", func(t *testing.T) {
		got := runPage(t, browser, other, heedURL, token, "web-carol", "5")
		// heed answered (the request may even have applied), but the browser
		// hides the answer from a page of an origin heed does not list:
		// fetch fails without a status.
		if got.State != "error" || strings.Contains(got.Status, "bearer token") || got.Balance == "5" {
			t.Fatalf("page shows state %q, balance %q, status %q; want a failed fetch", got.State, got.Balance, got.Status)
		}
		t.Logf("from %s the page shows: %s", other, got.Status)
	})
}

// findChromium returns the path of a Chromium (or Chrome) binary; none
// follows testenv's Require policy.
func findChromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Require(t, "headless Chromium", errors.New("no chromium, chromium-browser or google-chrome in PATH; install it (Debian: apt-get install chromium; .ci/run does)"))
	return ""
}

// buildPage bundles the page (examples/web/build.mjs) into a temp dir and
// returns it. A missing node or node_modules follows testenv's Require
// policy.
func buildPage(t *testing.T) string {
	t.Helper()
	node := testenv.LookPath(t, "node")
	if _, err := os.Stat(filepath.Join("node_modules", "esbuild")); err != nil {
		testenv.Require(t, "examples/web/node_modules", fmt.Errorf("%w: run `npm ci` in examples/web (.ci/run does)", err))
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "build.mjs", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("node build.mjs: %v\n%s", err, b)
	}
	return out
}

// startHeedDev runs the heed binary's dev with args until the test ends, and
// returns once its banner says the server is up.
func startHeedDev(t *testing.T, bin string, args ...string) {
	t.Helper()
	stdout := &banner{ready: make(chan struct{})}
	var stderr syncBuffer
	cmd := exec.Command(bin, append([]string{"dev"}, args...)...)
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start heed dev: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	select {
	case <-stdout.ready:
	case err := <-done:
		done <- err
		t.Fatalf("heed dev exited before its banner: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, &stderr)
	case <-time.After(90 * time.Second):
		t.Fatalf("heed dev printed no banner within 90s\nstdout:\n%s\nstderr:\n%s", stdout, &stderr)
	}
}

// newBrowser starts headless Chromium at path for the test; each runPage
// opens a tab in it.
func newBrowser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(t.TempDir()),
	)
	if os.Geteuid() == 0 {
		opts = append(opts, chromedp.NoSandbox) // Chromium refuses to run as root with its sandbox
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancelBrowser := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancelBrowser(); cancelAlloc() })
	if err := chromedp.Do(browser); err != nil { // starts the browser
		testenv.Require(t, "headless Chromium", fmt.Errorf("start %s: %w", path, err))
	}
	return browser
}

// shown is what the page shows once its run ended.
type shown struct {
	State   string `json:"state"` // done or error
	Balance string `json:"balance"`
	Status  string `json:"status"`
	Log     string `json:"log"`
}

// ended is true until the page's run ended, then what the page shows.
const ended = `(() => {
	const text = (id) => document.getElementById(id).textContent;
	const state = document.getElementById("balance").dataset.state;
	return (state === "done" || state === "error") &&
		{state, balance: text("balance"), status: text("status"), log: text("log")};
})()`

// runPage opens the page at origin in a new tab, fills the form (heed's
// URL, token, account and amount), submits it and returns what the page
// shows once it is done or failed.
func runPage(t *testing.T, browser context.Context, origin, heedURL, token, account, amount string) shown {
	t.Helper()
	tab, cancel := chromedp.NewContext(browser)
	defer cancel()
	q := url.Values{"server": {heedURL}, "token": {token}}
	err := chromedp.Do(tab,
		chromedp.Navigate(origin+"/index.html?"+q.Encode()),
		chromedp.WaitReady(chromedp.CSS("#run")),
		chromedp.SetValue(chromedp.CSS("#account"), account),
		chromedp.SetValue(chromedp.CSS("#amount"), amount),
		chromedp.Click(chromedp.CSS("#run")),
	)
	if err != nil {
		t.Fatalf("drive the page at %s: %v", origin, err)
	}
	got, err := chromedp.Run(tab, chromedp.Poll[shown](ended, chromedp.WithPollingTimeout(60*time.Second)))
	if err != nil {
		t.Fatalf("wait for the page at %s to finish: %v", origin, err)
	}
	return got
}

// banner collects heed dev's stdout and closes ready once it holds
// serverLine.
type banner struct {
	syncBuffer
	once  sync.Once
	ready chan struct{}
}

func (b *banner) Write(p []byte) (int, error) {
	n, err := b.syncBuffer.Write(p)
	if strings.Contains(b.String(), serverLine) {
		b.once.Do(func() { close(b.ready) })
	}
	return n, err
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the test's
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}
