// Command heed runs the listen-to-yourself pipeline: `heed dev` runs everything
// in one process; `heed broker`, `heed serve`, `heed apply` and `heed migrate`
// run the parts apart. `heed help VERB` explains a verb.
package main

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
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		<-ctx.Done()
		stop() // from now on a second signal kills the process at once
		fmt.Fprintln(os.Stderr, "heed: stopping (in-flight work gets --shutdown-timeout where the verb has it); a second signal exits at once")
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
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
	new     func() command
	// actions, if any, are what the verb's first argument may name (heed
	// quarantine list); its command then implements actionCommand.
	actions []string
}

// actionCommand is a command whose first argument names an action.
type actionCommand interface {
	command
	setAction(action string)
}

func verbs() []verb {
	return []verb{devVerb, brokerVerb, serveVerb, applyVerb, migrateVerb, topicVerb, quarantineVerb, rebuildVerb, auditVerb, tokenVerb, healthcheckVerb, benchVerb}
}

func find(name string) (verb, bool) {
	for _, v := range verbs() {
		if v.name == name {
			return v, true
		}
	}
	return verb{}, false
}

// run executes the verb named by args[0] and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr) // a mistake: usage on stderr, like an unknown verb
		return 2
	}
	if args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		return help(args, stdout, stderr)
	}
	v, ok := find(args[0])
	if !ok {
		fmt.Fprintf(stderr, "heed: unknown verb %q; run `heed help` for the list\n", args[0])
		return 2
	}
	cmd := v.new()
	rest := args[1:]
	if len(v.actions) > 0 {
		if len(rest) == 0 || !slices.Contains(v.actions, rest[0]) {
			fmt.Fprintf(stderr, "heed %s: name an action first: %s (e.g. %s)\n", v.name, strings.Join(v.actions, ", "), v.example)
			return 2
		}
		cmd.(actionCommand).setAction(rest[0])
		rest = rest[1:]
	}
	fs := newFlagSet(v, cmd, stderr)
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

func newFlagSet(v verb, cmd command, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("heed "+v.name, flag.ContinueOnError)
	fs.SetOutput(out)
	cmd.flags(fs)
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

func help(args []string, stdout, stderr io.Writer) int {
	if len(args) >= 2 {
		v, ok := find(args[1])
		if !ok {
			fmt.Fprintf(stderr, "heed help: unknown verb %q\n", args[1])
			return 2
		}
		printVerb(v, newFlagSet(v, v.new(), stdout), stdout)
		return 0
	}
	printUsage(stdout)
	return 0
}

// printUsage lists the verbs.
func printUsage(w io.Writer) {
	fmt.Fprintln(w, "heed: change a database and tell the world about it, without dual writes.")
	fmt.Fprint(w, "\nUsage: heed VERB [flags]\n\nVerbs:\n")
	for _, v := range verbs() {
		fmt.Fprintf(w, "  %-11s %s\n", v.name, v.summary)
	}
	fmt.Fprintln(w, "\nRun `heed help VERB` for a verb's flags and an example.")
}
