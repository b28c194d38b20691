package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/internal/testenv"
)

// bannerLine is the line of heed dev's banner that says the server is up.
const bannerLine = "  server    http://"

// brokerReadyLine is what heed broker prints once it serves.
const brokerReadyLine = "broker listening on "

// devAddrs are the addresses one heed dev instance serves on.
type devAddrs struct {
	listen, broker string
}

func freeDevAddrs(tb testing.TB) devAddrs {
	tb.Helper()
	return devAddrs{
		listen: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(tb)),
		broker: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(tb)),
	}
}

// devArgs are the arguments of `heed dev` serving on a, persisting under
// dataDir and applying to the database at dbURL.
func devArgs(a devAddrs, dataDir, dbURL string) []string {
	return []string{"dev",
		"--data-dir", dataDir,
		"--listen", a.listen,
		"--broker-listen", a.broker,
		"--database-url", dbURL,
		"--log-level", "warn",
	}
}

// builtDev is the built heed binary running heed dev as a process, on a fresh
// database and data dir, with an account opened through it.
type builtDev struct {
	bin, dbURL, dataDir string
	addrs               devAddrs
	args                []string
	client              ledgerv1connect.LedgerServiceClient
	first               *process
}

// startBuiltDev builds heed, starts heed dev and opens account through it
// with request ID requestID. It skips under -short.
func startBuiltDev(t *testing.T, requestID, account string) *builtDev {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	d := &builtDev{dbURL: testenv.PostgresURL(t), bin: testenv.BuildHeed(t), dataDir: t.TempDir(), addrs: freeDevAddrs(t)}
	d.args = devArgs(d.addrs, d.dataDir, d.dbURL)
	d.client = ledgerClient(d.addrs.listen)
	d.first = startDev(t, d.bin, d.args...)
	if _, err := d.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: requestID, AccountId: account})); err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	return d
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// bannerWriter passes everything to a buffer and closes ready once it has
// seen marker (heed dev's server line, heed broker's ready line).
type bannerWriter struct {
	syncBuffer
	marker string
	once   sync.Once
	ready  chan struct{}
}

func newBannerWriter(marker string) *bannerWriter {
	return &bannerWriter{marker: marker, ready: make(chan struct{})}
}

func (w *bannerWriter) Write(p []byte) (int, error) {
	n, err := w.syncBuffer.Write(p)
	if strings.Contains(w.String(), w.marker) {
		w.once.Do(func() { close(w.ready) })
	}
	return n, err
}

// process is a running heed binary.
type process struct {
	cmd    *exec.Cmd
	stdout *bannerWriter
	stderr *bannerWriter
	done   chan struct{}
	err    error // set before done closes
}

// startDev starts `bin args...` and waits for heed dev's banner. The process
// is killed in tb.Cleanup if still running.
func startDev(tb testing.TB, bin string, args ...string) *process {
	tb.Helper()
	return startHeed(tb, bin, bannerLine, args...)
}

// startHeed starts `bin args...` and waits until its stdout shows marker.
// The process is killed in tb.Cleanup if still running.
func startHeed(tb testing.TB, bin, marker string, args ...string) *process {
	tb.Helper()
	return startProcess(tb, bin, newBannerWriter(marker), newBannerWriter(""), args...)
}

// startHeedLog starts `bin args...` and waits until its log (stderr) shows
// marker: serve and apply print nothing on stdout.
func startHeedLog(tb testing.TB, bin, marker string, args ...string) *process {
	tb.Helper()
	return startProcess(tb, bin, newBannerWriter(""), newBannerWriter(marker), args...)
}

// startHeedEnv is startHeedLog with env added to the process's environment.
func startHeedEnv(tb testing.TB, env []string, bin, marker string, args ...string) *process {
	tb.Helper()
	return startProcessEnv(tb, env, bin, newBannerWriter(""), newBannerWriter(marker), args...)
}

// startProcess starts `bin args...` and waits until out or errw, whichever
// has a marker, has seen it.
func startProcess(tb testing.TB, bin string, out, errw *bannerWriter, args ...string) *process {
	tb.Helper()
	return startProcessEnv(tb, nil, bin, out, errw, args...)
}

func startProcessEnv(tb testing.TB, env []string, bin string, out, errw *bannerWriter, args ...string) *process {
	tb.Helper()
	marker, ready := out.marker, out.ready
	if marker == "" {
		marker, ready = errw.marker, errw.ready
	}
	p := &process{cmd: exec.Command(bin, args...), stdout: out, stderr: errw, done: make(chan struct{})}
	if env != nil {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.Stdout = p.stdout
	p.cmd.Stderr = p.stderr
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	tb.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case <-ready:
	case <-p.done:
		tb.Fatalf("heed exited before printing %q: %v\nstdout:\n%s\nstderr:\n%s", marker, p.err, p.stdout.String(), p.stderr.String())
	case <-time.After(60 * time.Second):
		tb.Fatalf("heed did not print %q within 60s\nstdout:\n%s\nstderr:\n%s", marker, p.stdout.String(), p.stderr.String())
	}
	return p
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill sends SIGKILL, as a crash would end it, and waits for the exit.
func (p *process) kill(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Kill(); err != nil {
		tb.Fatalf("kill heed: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		tb.Fatalf("heed still runs 30s after SIGKILL")
	}
}

// interrupt sends SIGINT and requires exit code 0 within 30s.
func (p *process) interrupt(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		tb.Fatalf("send SIGINT: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		tb.Fatalf("heed did not exit within 30s of SIGINT\nstderr:\n%s", p.stderr.String())
	}
	if p.err != nil {
		tb.Fatalf("heed exited with %v after SIGINT, want exit code 0\nstderr:\n%s", p.err, p.stderr.String())
	}
}

// runDev runs heed dev in-process through run() until the test ends, waits
// for its banner and returns what it printed so far. At cleanup it cancels
// the context and requires exit code 0.
func runDev(tb testing.TB, args ...string) string {
	tb.Helper()
	return runHeed(tb, bannerLine, args...)
}

// runHeed runs heed in-process through run() until the test ends, waits
// until its stdout shows marker and returns that stdout. At cleanup it
// cancels the context and requires exit code 0.
func runHeed(tb testing.TB, marker string, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdout, stderr := newBannerWriter(marker), new(syncBuffer)
	code := make(chan int, 1)
	go func() { code <- run(ctx, args, stdout, stderr) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case c := <-code:
			if c != 0 {
				tb.Errorf("heed %s exited with code %d after cancel, want 0\nstderr:\n%s", args[0], c, stderr.String())
			}
		case <-time.After(30 * time.Second):
			tb.Errorf("heed %s did not return within 30s of cancel\nstderr:\n%s", args[0], stderr.String())
		}
	})
	select {
	case <-stdout.ready:
	case c := <-code:
		code <- c
		tb.Fatalf("heed %s exited with code %d before printing %q\nstderr:\n%s", args[0], c, marker, stderr.String())
	case <-time.After(60 * time.Second):
		tb.Fatalf("heed %s did not print %q within 60s\nstderr:\n%s", args[0], marker, stderr.String())
	}
	return stdout.String()
}

func ledgerClient(addr string) ledgerv1connect.LedgerServiceClient {
	return ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, "http://"+addr)
}

// balance reads an account's balance after the write named by token is
// applied.
func balance(tb testing.TB, c ledgerv1connect.LedgerServiceClient, account, token string) int64 {
	tb.Helper()
	res, err := c.GetAccount(tb.Context(), connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: account, ConsistencyToken: token}))
	if err != nil {
		tb.Fatalf("GetAccount %s (token %q): %v", account, token, err)
	}
	return res.Msg.GetAccount().GetBalance()
}

// runTool runs a tool (with stdin closed) and returns its stdout; a non-zero
// exit fails the test unless wantFail, in which case the combined output is
// returned.
func runTool(tb testing.TB, timeout time.Duration, wantFail bool, name string, args ...string) string {
	tb.Helper()
	return runToolEnv(tb, nil, timeout, wantFail, name, args...)
}

// runToolEnv is runTool with env added to the environment.
func runToolEnv(tb testing.TB, env []string, timeout time.Duration, wantFail bool, name string, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = nil
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	switch {
	case wantFail && err == nil:
		tb.Fatalf("%s %s: succeeded, want failure\n%s", name, strings.Join(args, " "), stdout.String())
	case wantFail:
		return stdout.String() + stderr.String()
	case err != nil:
		tb.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// lines returns s's non-empty lines, trimmed.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// parts is heed broker running as a process over a fresh data dir, and a
// fresh database migrated with bin: what the process tests start serve and
// apply against. common are the flags serve and apply share.
type parts struct {
	dbURL, brokerAddr, listen string
	common                    []string
}

func startParts(t *testing.T, bin string, brokerArgs ...string) parts {
	t.Helper()
	p := parts{
		dbURL:      testenv.PostgresURL(t),
		brokerAddr: fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		listen:     fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
	startHeed(t, bin, "broker listening on", append([]string{"broker", "--data-dir", t.TempDir(), "--listen", p.brokerAddr}, brokerArgs...)...)
	runTool(t, time.Minute, false, bin, "migrate", "--database-url", p.dbURL)
	p.common = []string{"--brokers", p.brokerAddr, "--database-url", p.dbURL}
	return p
}

// produceKeyed writes recs to the default topic at broker, partitioned by key
// as heed's producer does, and fails the test unless the broker acknowledged.
func produceKeyed(tb testing.TB, broker string, recs ...*kgo.Record) {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(broker), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		tb.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(tb.Context(), recs...).FirstErr(); err != nil {
		tb.Fatalf("produce: %v", err)
	}
}
