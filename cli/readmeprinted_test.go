package cli

import (
	"context"

	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
)

// readmeAsPrintedEnv opts in to TestReadmeAsPrinted outside CI: it takes the
// README's own ports and recreates database heed on the local server.
const readmeAsPrintedEnv = "HEED_TEST_README_AS_PRINTED"

// TestReadmeAsPrinted follows the README as a new user does, in a fresh
// directory and shell: the built binary is `heed` on PATH, heed dev runs with
// its defaults (127.0.0.1:8080, 9092 and 9464, database heed on the local
// server, .heed in the working directory), and every console step of the
// walkthrough and the sections after it runs as printed, through sh, with its
// output compared (`...` ends a comparison): grpcurl, buf curl, kcat, psql,
// heed quarantine, and `mv .heed .heed-old && heed dev` (heed dev stopped
// first, restored after, as the README says). Then the rebuild section's
// commands (rebuild --verify --swap, --drop-old, audit) must succeed.
//
// It needs the README's ports free and recreates database heed, so it runs
// under CI=true (a fresh machine) or with HEED_TEST_README_AS_PRINTED=1.
func TestReadmeAsPrinted(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev on the README's ports")
	}
	if os.Getenv("CI") != "true" && os.Getenv(readmeAsPrintedEnv) != "1" {
		t.Skipf("takes the README's ports (8080, 9092, 9464) and recreates database heed on the local server: runs under CI=true or %s=1", readmeAsPrintedEnv)
	}
	for _, addr := range []string{readmeAddr, "127.0.0.1:9092", "127.0.0.1:9464"} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("the README's address %s is taken (%v): stop what holds it (a heed dev?)", addr, err)
		}
		ln.Close()
	}
	for _, tool := range []string{"grpcurl", "kcat", "psql"} {
		testenv.LookPath(t, tool)
	}
	admin := testenv.PostgresURL(t) // the local server answers (or the test fails under CI)
	adminDB := func(sql string) {
		ctx := context.Background() // also at cleanup, after t.Context() ended
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	adminDB("DROP DATABASE IF EXISTS " + devstack.DevDatabase + " WITH (FORCE)")
	t.Cleanup(func() { adminDB("DROP DATABASE IF EXISTS " + devstack.DevDatabase + " WITH (FORCE)") })

	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(testenv.BuildBinary(t, "./cmd/heed"), filepath.Join(bin, "heed")); err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	env := append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	sh := func(line string) (string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", "-c", strings.ReplaceAll(line, "scripts/buf.sh", filepath.Join(repo, "scripts/buf.sh")))
		cmd.Dir, cmd.Env = work, env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	startDev := func() *process {
		out, errw := newBannerWriter(bannerLine), newBannerWriter("")
		p := &process{cmd: exec.Command(filepath.Join(bin, "heed"), "dev"), stdout: out, stderr: errw, done: make(chan struct{})}
		p.cmd.Dir, p.cmd.Env, p.cmd.Stdout, p.cmd.Stderr = work, env, out, errw
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.err = p.cmd.Wait(); close(p.done) }()
		t.Cleanup(func() {
			if p.running() {
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		})
		select {
		case <-out.ready:
		case <-p.done:
			t.Fatalf("heed dev exited: %v\n%s%s", p.err, out.String(), errw.String())
		case <-time.After(2 * time.Minute):
			t.Fatalf("heed dev printed no banner in 2 minutes\n%s%s", out.String(), errw.String())
		}
		return p
	}
	dev := startDev()

	steps := readmeSteps(t, "")
	if len(steps) < 25 {
		t.Fatalf("the README has %d console steps; want the walkthrough's (25 or more)", len(steps))
	}
	for _, s := range steps {
		switch {
		case strings.HasPrefix(s.command, "mv .heed .heed-old && heed dev"):
			dev.interrupt(t) // the README's user stopped heed dev with Ctrl-C first
			got, err := sh(s.command)
			// The README says "your topic ID differs".
			if err == nil || !matchTail(topicIDs.ReplaceAllString(stripLogs(got), "topic ID X"), topicIDsIn(s.output)) {
				t.Errorf("$ %s\nerr %v, got:\n%s\nthe README prints:\n%s", s.command, err, got, strings.Join(s.output, "\n"))
			}
			if got, err := sh("rm -rf .heed && mv .heed-old .heed"); err != nil {
				t.Fatalf("restore .heed: %v\n%s", err, got)
			}
			dev = startDev()
			continue
		}
		var err error
		got := settled(s, func() string {
			var out string
			out, err = sh(s.command)
			return out
		})
		if len(s.output) == 0 && strings.TrimSpace(got) != "" || len(s.output) > 0 && !matchOutput(got, s.output) {
			t.Errorf("$ %s\nerr %v, got:\n%s\nthe README prints:\n%s", s.command, err, got, strings.Join(s.output, "\n"))
		}
	}

	// The rebuild section, as printed (its build step aside: heed is built).
	var ran int
	for _, line := range readmeBlockLines(t, "## Rebuilding and auditing the projection", "sh") {
		if !strings.HasPrefix(line, "./heed ") {
			continue
		}
		ran++
		if got, err := sh(strings.TrimPrefix(line, "./")); err != nil {
			t.Errorf("$ %s\n%v\n%s", line, err, got)
		}
	}
	t.Logf("ran %d console steps and %d commands of the rebuild section, as printed", len(steps), ran)
	if ran < 3 {
		t.Errorf("ran %d commands of the rebuild section; want its rebuild, drop-old and audit", ran)
	}
	dev.interrupt(t)
}

// stripLogs drops heed's JSON log lines from output, keeping what a user
// reads: the error heed exits with.
func stripLogs(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if !strings.HasPrefix(l, `{"time":`) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// readmeBlockLines returns the lines of the README's first code block of
// language lang after the heading.
func readmeBlockLines(tb testing.TB, heading, lang string) []string {
	tb.Helper()
	b, err := os.ReadFile(readmePath)
	if err != nil {
		tb.Fatal(err)
	}
	_, after, ok := strings.Cut(string(b), "\n"+heading+"\n")
	if !ok {
		tb.Fatalf("the README has no heading %q", heading)
	}
	_, block, ok := strings.Cut(after, "```"+lang+"\n")
	if !ok {
		tb.Fatalf("no %s block after %q", lang, heading)
	}
	block, _, _ = strings.Cut(block, "```")
	return strings.Split(strings.TrimSpace(block), "\n")
}

// matchTail compares the end of got with what the README prints after its
// "..." line (all of it when there is none).
func matchTail(got string, want []string) bool {
	if i := slices.IndexFunc(want, func(l string) bool { return strings.TrimSpace(l) == "..." }); i >= 0 {
		want = want[i+1:]
	}
	for len(want) > 0 && strings.TrimSpace(want[len(want)-1]) == "" {
		want = want[:len(want)-1]
	}
	lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	if len(want) == 0 || len(lines) < len(want) {
		return false
	}
	return matchOutput(strings.Join(lines[len(lines)-len(want):], "\n"), want)
}

// topicIDs finds a topic ID in heed's messages.
var topicIDs = regexp.MustCompile(`topic ID [0-9a-f-]{36}`)

func topicIDsIn(lines []string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		out[i] = topicIDs.ReplaceAllString(l, "topic ID X")
	}
	return out
}
