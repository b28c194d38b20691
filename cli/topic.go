package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/topic"
)

var topicVerb = verb{
	name:    "topic",
	summary: "create the topic with durable settings, show the topic the projection is built from, or confirm a grown partition count (create, show, confirm-partitions)",
	example: "heed topic show --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func(d *heed.Domain) command { return &topicCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}} },
	actions: []string{"create", "show", "confirm-partitions"},
}

type topicCmd struct {
	action      string
	partitions  int
	replication int
	kafka       kafkaFlags
	db          dbFlags
	log         logFlags
	fence       time.Duration
	timeout     time.Duration
}

func (c *topicCmd) setAction(a string) { c.action = a }

func (c *topicCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the projection, e.g. postgres://postgres@127.0.0.1:5432/heed")
	fs.DurationVar(&c.fence, "fence", 5*topic.DefaultGuardInterval,
		"confirm-partitions: how long the drained topic must stay still before the new count is recorded (longer than a serve's check interval, 2s)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Minute, "confirm-partitions: how long to wait for the old partitions to drain")
	fs.IntVar(&c.partitions, "partitions", defaultPartitions, "create: the partition count (fixed once commands flow: size it for the applier parallelism you need)")
	fs.IntVar(&c.replication, "replication", -1, "create: replicas per partition (-1: 3, or the number of brokers when fewer)")
	c.log.registerLevel(fs, "warn")
}

func (c *topicCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if c.action == "create" {
		return c.create(ctx, stdout, logger)
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

// create makes the topic (if it does not exist) with infinite retention,
// cleanup.policy=delete and the replication and min.insync.replicas that keep
// acknowledged events, then reports whatever in its settings breaks that
// (an existing topic is left as it is). It needs no database.
func (c *topicCmd) create(ctx context.Context, w io.Writer, logger *slog.Logger) error {
	if err := firstError(atLeast("partitions", c.partitions, 1), c.kafka.sec.Validate()); err != nil {
		return err
	}
	cl, err := c.kafka.newClient()
	if err != nil {
		return err
	}
	defer cl.Close()
	n, err := ingest.EnsureTopic(ctx, cl, c.kafka.topic, int32(c.partitions), int16(c.replication))
	if err != nil {
		return err
	}
	d, err := ingest.DescribeDurability(ctx, cl, c.kafka.topic)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "topic %s: %d partitions, replication %d on %d brokers, min.insync.replicas %d, cleanup.policy %s, retention.ms %s\n",
		c.kafka.topic, n, d.Replication, d.Brokers, d.MinInsync, d.CleanupPolicy, d.RetentionMs)
	if n != int32(c.partitions) {
		fmt.Fprintf(w, "note: the topic existed with %d partitions, not the %d asked for; heed does not change a partition count (see heed topic confirm-partitions)\n", n, c.partitions)
	}
	problems := d.Problems()
	for _, p := range problems {
		logger.Warn("the topic's settings break \"an acknowledged command is durable\"", "topic", c.kafka.topic, "problem", p)
	}
	if len(problems) > 0 {
		return fmt.Errorf("topic %s exists with settings that can lose acknowledged events (%d problems, logged above); fix them with kafka-configs.sh", c.kafka.topic, len(problems))
	}
	return nil
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
	listEnds := func(ctx context.Context) (map[int32]int64, error) {
		return consistency.ListEndOffsets(ctx, cl, c.kafka.topic)
	}
	if ok { // Bind only compares once an identity is recorded
		if _, err := topic.Bind(ctx, pool, live, listEnds); err != nil {
			fmt.Fprintf(w, "MISMATCH: %v\n", err)
		} else {
			fmt.Fprintln(w, "match: serve, apply and dev run against it")
		}
	}
	// The positions before the ends, so that records applied in between do
	// not show as a negative lag.
	positions, err := applier.AppliedPositions(ctx, pool, c.kafka.topic)
	if err != nil {
		return err
	}
	ends, err := listEnds(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PARTITION\tAPPLIED\tEND\tLAG\t")
	for p := range live.Partitions {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t\n", p, positions[p], ends[p], ends[p]-positions[p])
	}
	return tw.Flush()
}
