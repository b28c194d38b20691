package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
)

const (
	flagsBegin = "<!-- flags:begin (generated: HEED_UPDATE_DOCS=1 go test -run TestOperationsDocFlags ./cli) -->"
	flagsEnd   = "<!-- flags:end -->"
)

// flagsDoc is the flags section of docs/OPERATIONS.md: every flag of every
// verb with its environment variable and default.
func flagsDoc() string {
	var b strings.Builder
	b.WriteString(flagsBegin + "\n")
	for _, v := range verbs(ledgerDomains()) {
		fs := flag.NewFlagSet(v.name, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		v.new(ledgerDomains()[0]).flags(fs)
		fmt.Fprintf(&b, "\n### heed %s\n\n%s. Example: `%s`\n\n| flag | environment | default | meaning |\n|---|---|---|---|\n", v.name, v.summary, v.example)
		fs.VisitAll(func(f *flag.Flag) {
			def := f.DefValue
			if def == "" {
				def = "none"
			}
			usage := strings.ReplaceAll(f.Usage, "|", "\\|")
			fmt.Fprintf(&b, "| `--%s` | `%s` | `%s` | %s |\n", f.Name, envName(f.Name), def, usage)
		})
	}
	b.WriteString("\n" + flagsEnd)
	return b.String()
}

// TestOperationsDocFlags keeps docs/OPERATIONS.md's list of flags and
// environment variables equal to the verbs' flags.
func TestOperationsDocFlags(t *testing.T) {
	const path = "../docs/OPERATIONS.md"
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	i, j := strings.Index(doc, flagsBegin), strings.Index(doc, flagsEnd)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated flags section (%q ... %q)", path, flagsBegin, flagsEnd)
	}
	want := flagsDoc()
	if doc[i:j+len(flagsEnd)] == want {
		return
	}
	if os.Getenv("HEED_UPDATE_DOCS") != "" {
		if err := os.WriteFile(path, []byte(doc[:i]+want+doc[j+len(flagsEnd):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("%s lists other flags than the verbs have: run HEED_UPDATE_DOCS=1 go test -run TestOperationsDocFlags ./cli", path)
}
