package chaos

import (
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed"
)

// A target is the domain a run drives: its binary (cli.Main of the domain,
// with every heed verb), built with failpoints; the domain, for its topic,
// schema and event IDs; and what the run sends and checks. Everything else
// (the stack, the faults, the load's retries, the checks of positions,
// outcomes, the rebuild and the topic's identity) is the same for every
// target.
type target struct {
	name  string // the subtest's
	pkg   string // the binary's main package, from the module root
	dom   *heed.Domain
	short time.Duration // the faults of a short run
	pause time.Duration // between a worker's commands: a steady load, not a flood
	// client is a sender of the domain's commands to the server at addr.
	client func(addr string) sender
	// probe is the command waitServing sends server; keyed "probe", which
	// the checks leave out.
	probe func(server string) command
	// worker is worker w's (of workers) commands, drawing from rng: next(i)
	// is its i-th, asked for once the one before it is acknowledged.
	worker func(w, workers int, rng *rand.Rand) (next func(i int) command)
	// check checks the projection against the acknowledged commands and
	// their outcomes (checkOutcomes has checked that each has exactly one),
	// and sums it up for the run's report.
	check func(t *testing.T, s *stack, acked []command, outcomes []outcome) string
	// faults are the target's own kinds (the relay's, for a domain that
	// emits follow-ups): a run's first draws are each of them once, in a
	// random order, then one of them a third of the time.
	faults []fault
	// during, if set, starts a check that runs beside the load until the
	// returned stop is called (before the checks at the end); stop returns
	// its summary. It reports failures through t.
	during func(ctx context.Context, t *testing.T, s *stack, l *load, seed uint64) (stop func() string)
}

// targets are the domains TestChaos runs, each as a subtest.
var targets = []*target{ledgerTarget, bookingTarget}

// outcome is a processed event's status (heed.command.v1.CommandStatus).
type outcome int16

const (
	lost     outcome = 0 // no processed row
	applied  outcome = 2
	rejected outcome = 3
)

// topic is the target's event topic.
func (s *stack) topic() string { return s.tg.dom.DefaultTopic() }

// table is name in the projection's schema, quoted for SQL.
func (s *stack) table(name string) string {
	return pgx.Identifier{s.tg.dom.DefaultSchema(), name}.Sanitize()
}

// connect is a connection to the stack's database, closed when t ends.
func (s *stack) connect(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
