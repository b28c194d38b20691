package booking_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// The README's addresses and database, which the test replaces with its own.
const (
	readmeAddr        = "127.0.0.1:8080"
	readmeDatabaseURL = "postgres://postgres@127.0.0.1:5432/heed"
	readmeBinary      = "go run ./examples/booking/cmd/booking "
)

// readmeExpiryStep is the README's command sent "after a moment", once the
// hold before it (ttl 1s) expired by the clock that stamps records.
const readmeExpiryStep = `"request_id":"confirm-carol","show_id"`

// TestReadmeWalkthrough runs README.md's console steps in order against a
// fresh booking dev from the built binary, and requires each to print what
// the README prints: grpcurl, buf curl (through scripts/buf.sh) and the
// binary's operator verbs.
func TestReadmeWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the booking binary, grpcurl and buf")
	}
	walkthrough(t, "README.md", 15)
}

// walkthrough runs the console steps of the markdown file at path in order
// against a fresh booking dev from the built binary, and requires each to
// print what the file prints; it needs at least min steps.
func walkthrough(t *testing.T, path string, min int) {
	t.Helper()
	grpcurl := testenv.LookPath(t, "grpcurl")
	bufScript, err := filepath.Abs("../../scripts/buf.sh")
	if err != nil {
		t.Fatal(err)
	}
	d := newDev(t, buildBooking(t))
	d.start(t)
	steps := consoleSteps(t, path)
	if len(steps) < min {
		t.Fatalf("%s has %d console steps, want the walkthrough's (%d or more)", path, len(steps), min)
	}
	for _, s := range steps {
		words := shellWords(t, s.command)
		for i, w := range words {
			switch {
			case w == readmeAddr:
				words[i] = d.listen
			case w == readmeDatabaseURL:
				words[i] = d.dbURL
			case strings.HasPrefix(w, "http://"+readmeAddr+"/"):
				words[i] = "http://" + d.listen + strings.TrimPrefix(w, "http://"+readmeAddr)
			}
		}
		var name string
		var timeout = time.Minute
		switch {
		case words[0] == "grpcurl":
			name = grpcurl
		case strings.HasPrefix(s.command, "scripts/buf.sh "):
			// The first run builds buf (minutes on a cold cache); CI builds it
			// earlier with `scripts/buf.sh check`.
			name, words, timeout = "bash", append([]string{"bash", bufScript}, words[1:]...), 8*time.Minute
		case strings.HasPrefix(s.command, readmeBinary):
			name, words = d.bin, append(append([]string{"booking"}, words[3:]...), "--brokers", d.broker)
		default:
			t.Fatalf("%s step %q: the test runs grpcurl, scripts/buf.sh and %q only", path, s.command, readmeBinary)
		}
		if strings.Contains(s.command, readmeExpiryStep) {
			time.Sleep(1100 * time.Millisecond)
		}
		got := runStep(t, timeout, name, words[1:]...)
		if !matchOutput(got, s.output) {
			t.Errorf("$ %s\ngot:\n%s\n%s prints:\n%s", s.command, got, path, strings.Join(s.output, "\n"))
		}
	}
}

// consoleStep is one `$ command` of a console block and what it printed.
type consoleStep struct {
	command string
	output  []string
}

func consoleSteps(tb testing.TB, path string) []consoleStep {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	var steps []consoleStep
	in := false
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```console":
			in = true
		case strings.HasPrefix(line, "```"):
			in = false
		case !in:
		case strings.HasPrefix(line, "$ "):
			steps = append(steps, consoleStep{command: strings.TrimPrefix(line, "$ ")})
		case len(steps) > 0:
			steps[len(steps)-1].output = append(steps[len(steps)-1].output, line)
		}
	}
	return steps
}

// shellWords splits a command line as sh does for the README's commands:
// words separated by spaces, '...' and "..." quoting, no escapes.
func shellWords(tb testing.TB, line string) []string {
	tb.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		tb.Fatalf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// runStep runs name args (stdin closed) and returns its stdout and stderr;
// a failure is the test's.
func runStep(tb testing.TB, timeout time.Duration, name string, args ...string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		tb.Fatalf("%s %s: %v\nstdout:\n%s\nstderr:\n%s", name, strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String() + stderr.String()
}

// matchOutput compares got with what the README prints, line by line,
// trailing spaces ignored: a line "..." stands for any lines (none too), a
// line ending in "..." for a line that starts with what comes before it.
func matchOutput(got string, want []string) bool {
	lines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	for len(want) > 0 && strings.TrimSpace(want[len(want)-1]) == "" {
		want = want[:len(want)-1]
	}
	var match func(g, w []string) bool
	match = func(g, w []string) bool {
		if len(w) == 0 {
			return len(g) == 0
		}
		if strings.TrimSpace(w[0]) == "..." {
			for i := 0; i <= len(g); i++ {
				if match(g[i:], w[1:]) {
					return true
				}
			}
			return false
		}
		if len(g) == 0 {
			return false
		}
		gl, wl := strings.TrimRight(g[0], " \t"), strings.TrimRight(w[0], " \t")
		if prefix, ok := strings.CutSuffix(wl, "..."); ok {
			if !strings.HasPrefix(gl, prefix) {
				return false
			}
		} else if gl != wl {
			return false
		}
		return match(g[1:], w[1:])
	}
	return match(lines, want)
}
