// Package cli turns domains into a binary with every verb heed has: `dev`
// runs everything in one process; `broker`, `serve`, `apply` and `migrate`
// run the parts apart; `rebuild`, `audit`, `quarantine`, `topic`, `token` and
// `healthcheck` operate them. `help VERB` explains a verb. A domain's main is
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
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/heed-dev/heed"
)

// Main runs the verb named by the process's arguments for one of domains
// and exits with its code: 0 on success, 1 when it failed, 2 on a usage
// error. SIGINT and SIGTERM stop it gracefully; a second one exits at once.
func Main(domains ...*heed.Domain) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // from now on a second signal kills the process at once
		fmt.Fprintln(os.Stderr, "heed: stopping (in-flight work gets --shutdown-timeout where the verb has it); a second signal exits at once")
	}()
	os.Exit(Run(ctx, domains, os.Args[1:], os.Stdout, os.Stderr))
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
	vs := []verb{devVerb, brokerVerb, serveVerb, applyVerb, migrateVerb, topicVerb, quarantineVerb, rebuildVerb, auditVerb, tokenVerb, healthcheckVerb}
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
		fmt.Fprintf(stderr, "heed: %v\n", err)
		return 2
	}
	if len(args) == 0 {
		printUsage(stderr, domains) // a mistake: usage on stderr, like an unknown verb
		return 2
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return help(domains, args, stdout, stderr)
	}
	v, ok := find(domains, args[0])
	if !ok {
		fmt.Fprintf(stderr, "heed: unknown verb %q; run `heed help` for the list\n", args[0])
		return 2
	}
	d, err := chooseDomain(domains, args[1:])
	if err != nil {
		fmt.Fprintf(stderr, "heed %s: %v\n", v.name, err)
		return 2
	}
	cmd := v.new(d)
	rest := args[1:]
	if len(v.actions) > 0 {
		if len(rest) == 0 || !slices.Contains(v.actions, rest[0]) {
			fmt.Fprintf(stderr, "heed %s: name an action first: %s (e.g. %s)\n", v.name, strings.Join(v.actions, ", "), v.example)
			return 2
		}
		cmd.(actionCommand).setAction(rest[0])
		rest = rest[1:]
	}
	fs := newFlagSet(v, cmd, stderr, domains, d)
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "heed %s: unexpected arguments %q; run `heed help %s`\n", v.name, fs.Args(), v.name)
		return 2
	}
	if err := applyEnv(fs); err != nil {
		fmt.Fprintf(stderr, "heed %s: %v\n", v.name, err)
		return 2
	}
	if err := cmd.run(ctx, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "heed %s: %v\n", v.name, err)
		return 1
	}
	return 0
}

func newFlagSet(v verb, cmd command, out io.Writer, domains []*heed.Domain, d *heed.Domain) *flag.FlagSet {
	fs := flag.NewFlagSet("heed "+v.name, flag.ContinueOnError)
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
	usage := "heed " + v.name
	if len(v.actions) > 0 {
		usage += " " + strings.Join(v.actions, "|")
	}
	fmt.Fprintf(w, "heed %s: %s\n\nUsage: %s [flags]\n\nExample:\n  %s\n\nFlags (each also read from the environment variable shown):\n", v.name, v.summary, usage, v.example)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func help(domains []*heed.Domain, args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 {
		v, ok := find(domains, args[1])
		if !ok {
			fmt.Fprintf(stderr, "heed help: unknown verb %q\n", args[1])
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
	fmt.Fprintln(w, "heed: change a database and tell the world about it, without dual writes.")
	fmt.Fprint(w, "\nUsage: heed VERB [flags]\n\nVerbs:\n")
	for _, v := range verbs(domains) {
		fmt.Fprintf(w, "  %-11s %s\n", v.name, v.summary)
	}
	if len(domains) > 1 {
		fmt.Fprintf(w, "\nDomains: %s (choose with --domain or HEED_DOMAIN)\n", strings.Join(domainNames(domains), ", "))
	}
	fmt.Fprintln(w, "\nRun `heed help VERB` for a verb's flags and an example.")
}
