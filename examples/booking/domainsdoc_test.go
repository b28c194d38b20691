package booking_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// domainsDoc is the walkthrough that builds this domain from scratch.
const domainsDoc = "../../docs/DOMAINS.md"

// TestDomainsDoc checks docs/DOMAINS.md: every go, proto and sql block names,
// on its first line, the file it comes from ("// from PATH" or "-- from
// PATH", from the repository's root) and is a verbatim piece of it, so the
// doc's code is code that compiles and is tested here (or in the ledger's
// package); and its console steps run as printed against a fresh booking
// dev.
func TestDomainsDoc(t *testing.T) {
	blocks := codeBlocks(t, domainsDoc)
	if len(blocks) < 8 {
		t.Fatalf("%s has %d code blocks, want the walkthrough's (8 or more)", domainsDoc, len(blocks))
	}
	for _, b := range blocks {
		first, rest, _ := strings.Cut(b.text, "\n")
		path, ok := strings.CutPrefix(first, "// from ")
		if !ok {
			path, ok = strings.CutPrefix(first, "-- from ")
		}
		if !ok {
			t.Errorf("%s: the %s block at line %d does not start with `// from PATH` (or `-- from PATH`): %q", domainsDoc, b.lang, b.line, first)
			continue
		}
		src, err := os.ReadFile(filepath.Join("../..", path))
		if err != nil {
			t.Errorf("%s line %d: %v", domainsDoc, b.line, err)
			continue
		}
		if !strings.Contains(string(src), rest) {
			t.Errorf("%s line %d: the block is not a verbatim piece of %s (it was changed there, or here):\n%s", domainsDoc, b.line, path, rest)
		}
	}
	if testing.Short() {
		return
	}
	walkthrough(t, domainsDoc, 5)
}

// codeBlock is a fenced block of a markdown file in one of the languages
// TestDomainsDoc checks.
type codeBlock struct {
	lang, text string
	line       int
}

func codeBlocks(tb testing.TB, path string) []codeBlock {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read %s: %v", path, err)
	}
	var (
		out  []codeBlock
		cur  *codeBlock
		text []string
		n    int
	)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case cur == nil && (line == "```go" || line == "```proto" || line == "```sql"):
			cur, text = &codeBlock{lang: strings.TrimPrefix(line, "```"), line: n}, nil
		case cur != nil && line == "```":
			cur.text = strings.Join(text, "\n") + "\n"
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			text = append(text, line)
		}
	}
	return out
}
