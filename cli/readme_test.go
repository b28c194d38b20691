package cli

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// readmePath is the README, relative to this package.
const readmePath = "../README.md"

// readmeAddr is the server address the README's commands use.
const readmeAddr = "127.0.0.1:8080"

// readmeDatabaseURL is the database URL the README's commands use.
const readmeDatabaseURL = "postgres://postgres@127.0.0.1:5432/heed"

// consoleStep is one `$ command` of a README console block and the output
// printed under it.
type consoleStep struct {
	command string
	output  []string
}

// readmeSteps returns the README's console steps whose command starts with
// prefix, in order.
func readmeSteps(tb testing.TB, prefix string) []consoleStep {
	tb.Helper()
	b, err := os.ReadFile(readmePath)
	if err != nil {
		tb.Fatalf("read the README: %v", err)
	}
	var steps []consoleStep
	inConsole := false
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "```console":
			inConsole = true
		case strings.HasPrefix(line, "```"):
			inConsole = false
		case !inConsole:
		case strings.HasPrefix(line, "$ "):
			steps = append(steps, consoleStep{command: strings.TrimPrefix(line, "$ ")})
		case len(steps) > 0:
			steps[len(steps)-1].output = append(steps[len(steps)-1].output, line)
		}
	}
	var out []consoleStep
	for _, s := range steps {
		if strings.HasPrefix(s.command, prefix) {
			out = append(out, s)
		}
	}
	return out
}

// shellWords splits a command line the way sh does for the README's
// commands: words separated by spaces, '...' and "..." quoting, no escapes.
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
		case r == ' ' || r == '\t':
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

// runCommand runs a grpcurl command line from the README or the banner
// against addr instead of the README's server address, and returns its
// output (stdout, then stderr) and whether it succeeded.
func runCommand(tb testing.TB, grpcurl, line, addr string) (string, bool) {
	tb.Helper()
	words := shellWords(tb, line)
	if len(words) == 0 || words[0] != "grpcurl" {
		tb.Fatalf("not a grpcurl command: %q", line)
	}
	for i, w := range words {
		if w == readmeAddr {
			words[i] = addr
		}
	}
	ctx, cancel := context.WithTimeout(tb.Context(), time.Minute)
	defer cancel()
	var stdout, stderr syncBuffer
	cmd := exec.CommandContext(ctx, grpcurl, words[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String() + stderr.String(), err == nil
}

// matchOutput compares got with the README's printed output: line by line,
// trailing spaces ignored, and a line "..." ends the comparison (the README
// cuts long error details there).
func matchOutput(got string, want []string) bool {
	gotLines := strings.Split(strings.TrimRight(got, "\n"), "\n")
	for len(want) > 0 && strings.TrimSpace(want[len(want)-1]) == "" {
		want = want[:len(want)-1]
	}
	for i, w := range want {
		if strings.TrimSpace(w) == "..." {
			return true
		}
		if i >= len(gotLines) || strings.TrimRight(gotLines[i], " \t") != strings.TrimRight(w, " \t") {
			return false
		}
	}
	return len(gotLines) == len(want)
}

// TestBannerThenWalkthrough does what a new user does: start heed dev, try
// the commands its banner suggests, then follow the README's walkthrough and
// the quarantine and transfer sections after it. Every grpcurl, kcat read and
// heed quarantine step must print what the README prints (event IDs,
// consistency tokens, balances, results, records), so the banner's examples
// must not touch the walkthrough's accounts, request IDs or partitions; the
// kcat step that writes a record by hand runs too. A transfer's later steps
// apply after the position its token names, so a GetCommandResult that still
// answers TRANSFER_STATE_PENDING where the README prints the transfer's end is
// asked again, as the README tells a user to.
func TestBannerThenWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev and grpcurl")
	}
	grpcurl := testenv.LookPath(t, "grpcurl")
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	banner := runDev(t, devArgs(addrs, t.TempDir(), dbURL)...)

	var tried int
	for _, l := range lines(banner) {
		if !strings.HasPrefix(l, "grpcurl ") {
			continue
		}
		tried++
		// The banner's read may run before its command is applied: a
		// NotFound there is what a user may see too, and harmless.
		runCommand(t, grpcurl, l, addrs.listen)
	}
	if tried == 0 {
		t.Fatalf("the banner suggests no grpcurl command:\n%s", banner)
	}

	steps := readmeSteps(t, "grpcurl ")
	if len(steps) < 10 {
		t.Fatalf("the README has %d grpcurl steps, want the walkthrough's (10 or more)", len(steps))
	}
	kcat := ""
	var kcatReads int
	for _, s := range readmeSteps(t, "") {
		switch {
		case strings.HasPrefix(s.command, "grpcurl "):
			got := runSettled(t, grpcurl, s, addrs.listen)
			if !matchOutput(got, s.output) {
				t.Errorf("$ %s\ngot:\n%s\nthe README prints:\n%s", s.command, got, strings.Join(s.output, "\n"))
			}
		case strings.HasPrefix(s.command, "printf ") && strings.Contains(s.command, "| kcat "):
			// A record written to the topic by hand, as the README does.
			if kcat == "" {
				kcat = testenv.LookPath(t, "kcat")
			}
			line := strings.ReplaceAll(s.command, "127.0.0.1:9092", addrs.broker)
			if out, err := exec.CommandContext(t.Context(), "sh", "-c", line).CombinedOutput(); err != nil {
				t.Fatalf("$ %s: %v\n%s", line, err, out)
			}
		case strings.HasPrefix(s.command, "kcat ") && strings.Contains(s.command, " -C "):
			// A read of the topic: of one partition, since the whole topic
			// holds the banner's records too.
			if !slices.Contains(shellWords(t, s.command), "-p") {
				t.Errorf("$ %s\nreads the whole topic, whose records include the banner's: read one partition (-p N)", s.command)
				continue
			}
			if kcat == "" {
				kcat = testenv.LookPath(t, "kcat")
			}
			kcatReads++
			line := strings.ReplaceAll(s.command, "127.0.0.1:9092", addrs.broker)
			got, err := exec.CommandContext(t.Context(), "sh", "-c", line).CombinedOutput()
			if err != nil || !matchOutput(string(got), s.output) {
				t.Errorf("$ %s\nerr %v, got:\n%s\nthe README prints:\n%s", s.command, err, got, strings.Join(s.output, "\n"))
			}
		case strings.HasPrefix(s.command, "heed quarantine "):
			words := shellWords(t, s.command)
			for i, w := range words {
				if w == readmeDatabaseURL {
					words[i] = dbURL
				}
			}
			if words[2] == "redrive" || words[2] == "drop" { // they write the decision to the topic
				words = append(words, "--brokers", addrs.broker)
			}
			code, got, errOut := runOnce(t, words[1:]...)
			if code != 0 || !matchOutput(got, s.output) {
				t.Errorf("$ %s\nexit %d, got:\n%s%s\nthe README prints:\n%s", s.command, code, got, errOut, strings.Join(s.output, "\n"))
			}
		}
	}
	if kcatReads < 3 {
		t.Errorf("the README has %d kcat reads of the topic, want the walkthrough's and the transfer's (3 or more)", kcatReads)
	}
}

// runSettled runs the grpcurl step s against addr and returns its output,
// asked again while a transfer is in flight (see settled).
func runSettled(t *testing.T, grpcurl string, s consoleStep, addr string) string {
	t.Helper()
	return settled(s, func() string {
		got, _ := runCommand(t, grpcurl, s.command, addr)
		return got
	})
}

// settled returns what run, a README step's command, prints; while that says
// a transfer is in flight (TRANSFER_STATE_PENDING) and the README prints it
// ended, it runs it again, for up to a minute: a transfer's later steps come
// after the position its token names, as the README tells a user.
func settled(s consoleStep, run func() string) string {
	deadline := time.Now().Add(time.Minute)
	for {
		got := run()
		pending := strings.Contains(got, "TRANSFER_STATE_PENDING") && !slices.ContainsFunc(s.output, func(l string) bool {
			return strings.Contains(l, "TRANSFER_STATE_PENDING")
		})
		if !pending || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadmeFirstRunSaysItCompiles checks that the README's first command,
// `go run ./cmd/heed dev`, is followed by a note that the first run compiles
// for minutes without output, and by the build-once alternative.
func TestReadmeFirstRunSaysItCompiles(t *testing.T) {
	b, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatalf("read the README: %v", err)
	}
	readme := string(b)
	i := strings.Index(readme, "go run ./cmd/heed dev")
	if i < 0 {
		t.Fatal("the README does not say `go run ./cmd/heed dev`")
	}
	next := readme[i:]
	if j := strings.Index(next, "\n## "); j >= 0 {
		next = next[:j]
	}
	for _, w := range []string{"minutes", "go build -o heed ./cmd/heed", "./heed dev"} {
		if !strings.Contains(next, w) {
			t.Errorf("the README's first section after `go run ./cmd/heed dev` does not say %q", w)
		}
	}
}
