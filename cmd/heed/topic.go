package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/topic"
)

var topicVerb = verb{
	name:    "topic",
	summary: "show the topic the projection is built from, or confirm a grown partition count (show, confirm-partitions)",
	example: "heed topic show --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func() command { return new(topicCmd) },
	actions: []string{"show", "confirm-partitions"},
}

type topicCmd struct {
	action  string
	kafka   kafkaFlags
	db      dbFlags
	log     logFlags
	fence   time.Duration
	timeout time.Duration
}

func (c *topicCmd) setAction(a string) { c.action = a }

func (c *topicCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the projection, e.g. postgres://postgres@127.0.0.1:5432/heed")
	fs.DurationVar(&c.fence, "fence", 5*topic.DefaultGuardInterval,
		"confirm-partitions: how long the drained topic must stay still before the new count is recorded (longer than a serve's check interval, 2s)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "confirm-partitions: how long to wait for the old partitions to drain")
	c.log.registerLevel(fs, "warn")
}

func (c *topicCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.db.validate(); err != nil {
		return err
	}
	if c.fence <= topic.DefaultGuardInterval {
		return fmt.Errorf("--fence %v: must be longer than a serve's check interval (%v), so that every serve refuses commands before the new count is recorded", c.fence, topic.DefaultGuardInterval)
	}
	pool, err := openDB(ctx, c.db, 2, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	cl, err := c.kafka.newClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	if c.action == "confirm-partitions" {
		ctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		rec, err := topic.ConfirmPartitions(ctx, pool, cl, c.kafka.topic, c.fence, func(s string) { fmt.Fprintln(stdout, s) })
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "schema %s is built from %s: serve admits commands again within %v, hashing keys over %d partitions; apply starts the new partitions\n",
			c.db.schema, rec, topic.DefaultGuardInterval, rec.Partitions)
		return nil
	}
	return c.show(ctx, stdout, pool, cl)
}

// show prints the recorded identity, the broker's, whether they match, and
// each partition's applied position against its end.
func (c *topicCmd) show(ctx context.Context, w io.Writer, pool topic.Querier, cl *kgo.Client) error {
	rec, ok, err := topic.Recorded(ctx, pool, c.kafka.topic)
	if err != nil {
		return err
	}
	if ok {
		fmt.Fprintf(w, "projection (schema %s): %s\n", c.db.schema, rec)
	} else {
		fmt.Fprintf(w, "projection (schema %s): no topic recorded yet (serve, apply and dev record it on first use)\n", c.db.schema)
	}
	live, err := topic.Describe(ctx, cl, c.kafka.topic)
	if errors.Is(err, topic.ErrMissing) {
		fmt.Fprintf(w, "broker: no topic %s\n", c.kafka.topic)
		return nil
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "broker: %s\n", live)
	ends, err := consistency.ListEndOffsets(ctx, cl, c.kafka.topic)
	if err != nil {
		return err
	}
	if ok { // Bind only compares once an identity is recorded
		if _, err := topic.Bind(ctx, pool, live, ends); err != nil {
			fmt.Fprintf(w, "MISMATCH: %v\n", err)
		} else {
			fmt.Fprintln(w, "match: serve, apply and dev run against it")
		}
	}
	positions := make(map[int32]int64)
	rows, err := pool.Query(ctx, `SELECT partition, next_offset FROM applied_positions WHERE topic = $1`, c.kafka.topic)
	if err != nil {
		return fmt.Errorf("read applied positions: %w", err)
	}
	for rows.Next() {
		var (
			p   int32
			pos int64
		)
		if err := rows.Scan(&p, &pos); err != nil {
			return fmt.Errorf("read applied positions: %w", err)
		}
		positions[p] = pos
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read applied positions: %w", err)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PARTITION\tAPPLIED\tEND\tLAG\t")
	for p := range live.Partitions {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t\n", p, positions[p], ends[p], ends[p]-positions[p])
	}
	return tw.Flush()
}
