// Package cli turns domains into a binary with every verb heed has: `dev`
// runs everything in one process; `broker`, `serve`, `apply` and `migrate`
// run the parts apart; `rebuild`, `audit`, `quarantine`, `topic`, `token` and
// `healthcheck` operate them; `version` says which build it is. `help VERB`
// explains a verb. A domain's main is
//
//	func main() { cli.Main(mydomain.Domain()) }
//
// With several domains, every verb takes --domain (HEED_DOMAIN) to say which
// one it runs; each domain has its own topic, group, schema and event IDs.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/heed-dev/heed"
)

// Main runs the verb named by the process's arguments for one of domains
// and exits with its code: 0 on success, 1 when it failed, 2 on a usage
// error. SIGINT and SIGTERM stop it gracefully; a second one exits at once.
func Main(domains ...*heed.Domain) {
	if name := filepath.Base(os.Args[0]); name != "" && name != "." && name != string(filepath.Separator) {
		program = name
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	followGoRun() // after the handler: the signal it may send stops heed gracefully
	go func() {
		<-ctx.Done()
		stop() // from now on a second signal kills the process at once
		fmt.Fprintln(os.Stderr, program+": stopping (in-flight work gets --shutdown-timeout where the verb has it); a second signal exits at once")
	}()
	os.Exit(Run(ctx, domains, os.Args[1:], os.Stdout, os.Stderr))
}

// program is the binary's name in usage, help and errors: what Main was run
// as ("heed" for the ledger's, "booking" for the booking example's). Set once
// by Main before anything reads it; Run in tests keeps "heed".
var program = "heed"

// named puts the binary's name in a text written for heed: its usage and
// examples say "heed VERB".
func named(text string) string {
	if program == "heed" {
		return text
	}
	return strings.ReplaceAll(strings.ReplaceAll(text, "`heed ", "`"+program+" "), "heed ", program+" ")
}

// command is one verb's flags and work. run is what tests drive in-process.
type command interface {
	flags(fs *flag.FlagSet)
	run(ctx context.Context, stdout, stderr io.Writer) error
}

type verb struct {
	name    string
	summary string
	example string // works as printed
	new     func(d *heed.Domain) command
	// actions, if any, are what the verb's first argument may name (heed
	// quarantine list); its command then implements actionCommand.
	actions []string
}

// actionCommand is a command whose first argument names an action.
type actionCommand interface {
	command
	setAction(action string)
}

// verbs are the binary's verbs; bench, which measures the reference ledger,
// only where the ledger is one of the domains.
func verbs(domains []*heed.Domain) []verb {
	vs := []verb{devVerb, brokerVerb, serveVerb, applyVerb, relayVerb, migrateVerb, topicVerb, quarantineVerb, rebuildVerb, auditVerb, tokenVerb, healthcheckVerb, versionVerb}
	for _, d := range domains {
		if d.Name() == "ledger" {
			vs = append(vs, benchVerb)
			break
		}
	}
	return vs
}

func find(domains []*heed.Domain, name string) (verb, bool) {
	for _, v := range verbs(domains) {
		if v.name == name {
			return v, true
		}
	}
	return verb{}, false
}

// Run executes the verb named by args[0] for one of domains and returns the
// exit code; what Main runs, and what tests drive in-process.
func Run(ctx context.Context, domains []*heed.Domain, args []string, stdout, stderr io.Writer) int {
	if err := checkDomains(domains); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", program, err)
		return 2
	}
	if len(args) == 0 {
		printUsage(stderr, domains) // a mistake: usage on stderr, like an unknown verb
		return 2
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return help(domains, args, stdout, stderr)
	}
	if args[0] == "--version" {
		args = []string{"version"}
	}
	v, ok := find(domains, args[0])
	if !ok {
		fmt.Fprintf(stderr, "%s: unknown verb %q; run `%s help` for the list\n", program, args[0], program)
		return 2
	}
	d, err := chooseDomain(domains, args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", program, v.name, err)
		return 2
	}
	cmd := v.new(d)
	rest := args[1:]
	if len(v.actions) > 0 {
		if len(rest) == 0 || !slices.Contains(v.actions, rest[0]) {
			if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
				unknown := fmt.Sprintf("unknown action %q", rest[0])
				if near := nearest(rest[0], v.actions); near != "" {
					unknown += fmt.Sprintf(" (did you mean %s?)", near)
				}
				fmt.Fprintf(stderr, "%s %s: %s; the actions are %s (e.g. %s)\n", program, v.name, unknown, strings.Join(v.actions, ", "), named(v.example))
				return 2
			}
			fmt.Fprintf(stderr, "%s %s: name an action first: %s (e.g. %s)\n", program, v.name, strings.Join(v.actions, ", "), named(v.example))
			return 2
		}
		cmd.(actionCommand).setAction(rest[0])
		rest = rest[1:]
	}
	fs := newFlagSet(v, cmd, stderr, domains, d)
	fs.SetOutput(io.Discard) // flagError says what is wrong, without every flag's usage after it
	fs.Usage = func() {}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) { // asked for: on stdout, like `heed help VERB`
			printVerb(v, fs, stdout)
			return 0
		}
		fmt.Fprintf(stderr, "%s %s: %s\n", program, v.name, flagError(fs, v, err))
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "%s %s: unexpected arguments %q; run `%s help %s`\n", program, v.name, fs.Args(), program, v.name)
		return 2
	}
	if err := applyEnv(fs); err != nil {
		fmt.Fprintf(stderr, "%s %s: %v\n", program, v.name, err)
		return 2
	}
	if err := cmd.run(ctx, stdout, stderr); err != nil {
		if f := fs.Lookup("log-format"); f != nil && f.Value.String() == "json" {
			// The logs' shape, so that the error a process dies with is
			// collected with them (passwords in URLs masked like theirs).
			slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{ReplaceAttr: redactAttr})).
				Error(program+" "+v.name+" failed", "err", named(err.Error()))
			return 1
		}
		fmt.Fprintf(stderr, "%s %s: %s\n", program, v.name, named(err.Error()))
		return 1
	}
	return 0
}

func newFlagSet(v verb, cmd command, out io.Writer, domains []*heed.Domain, d *heed.Domain) *flag.FlagSet {
	fs := flag.NewFlagSet(program+" "+v.name, flag.ContinueOnError)
	fs.SetOutput(out)
	cmd.flags(fs)
	if len(domains) > 1 {
		fs.String(domainFlag, d.Name(), "the domain the verb runs: "+strings.Join(domainNames(domains), ", "))
	}
	annotateEnv(fs)
	fs.Usage = func() { printVerb(v, fs, out) }
	return fs
}

func printVerb(v verb, fs *flag.FlagSet, w io.Writer) {
	usage := program + " " + v.name
	if len(v.actions) > 0 {
		usage += " " + strings.Join(v.actions, "|")
	}
	fmt.Fprintf(w, "%s %s: %s\n\nUsage: %s [flags]\n\nExample:\n  %s\n\nFlags (each also read from the environment variable shown):\n", program, v.name, v.summary, usage, named(v.example))
	printFlags(fs, w)
}

func help(domains []*heed.Domain, args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 && args[1] == "help" {
		fmt.Fprintf(stdout, "%[1]s help: list the verbs; %[1]s help VERB explains one: what it does, an example, and its flags with their environment variables\n\nUsage: %[1]s help [VERB]\n", program)
		return 0
	}
	if len(args) >= 2 {
		v, ok := find(domains, args[1])
		if !ok {
			fmt.Fprintf(stderr, "%s help: unknown verb %q\n", program, args[1])
			return 2
		}
		d, err := chooseDomain(domains, args[2:])
		if err != nil {
			d = domains[0]
		}
		printVerb(v, newFlagSet(v, v.new(d), stdout, domains, d), stdout)
		return 0
	}
	printUsage(stdout, domains)
	return 0
}

// printUsage lists the verbs.
func printUsage(w io.Writer, domains []*heed.Domain) {
	fmt.Fprintln(w, program+": change a database and tell the world about it, without dual writes.")
	fmt.Fprintf(w, "\nUsage: %s VERB [flags]\n\nVerbs:\n", program)
	for _, v := range verbs(domains) {
		fmt.Fprintf(w, "  %-11s %s\n", v.name, v.summary)
	}
	if len(domains) > 1 {
		fmt.Fprintf(w, "\nDomains: %s (choose with --domain or HEED_DOMAIN)\n", strings.Join(domainNames(domains), ", "))
	}
	fmt.Fprintf(w, "\nRun `%s help VERB` for a verb's flags and an example.\n", program)
}
