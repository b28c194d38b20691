package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	"github.com/heed-dev/heed/audit"
)

var auditVerb = verb{
	name:    "audit",
	summary: "check the projection against the topic: lag, skipped events, processed events without an event, outcomes, topic identity",
	example: "heed audit --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func(d *heed.Domain) command { return &auditCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}} },
}

type auditCmd struct {
	kafka    kafkaFlags
	db       dbFlags
	log      logFlags
	json     bool
	examples int
	every    time.Duration
}

func (c *auditCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the projection, e.g. postgres://postgres@127.0.0.1:5432/heed")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON (for machines) instead of tables")
	fs.IntVar(&c.examples, "examples", 10, "how many skipped events and orphans the report lists")
	fs.DurationVar(&c.every, "progress-interval", 10*time.Second, "how often progress is logged when stderr is not a terminal (a terminal gets a progress line every second)")
	c.log.registerLevel(fs, "warn")
}

// errDiverged is audit's error when the projection and the topic disagree.
var errDiverged = errors.New("the projection diverges from the topic (see the report)")

func (c *auditCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := firstError(c.db.validate(), positive("progress-interval", c.every)); err != nil {
		return err
	}
	if c.examples <= 0 {
		return fmt.Errorf("--examples %d: must be at least 1", c.examples)
	}
	pool, err := openDB(ctx, c.db, 2, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	sec, err := c.kafka.sec.Opts()
	if err != nil {
		return err
	}
	pr := newProgress(stderr, c.every, logger)
	rep, err := audit.Run(ctx, pool, audit.Config{
		KafkaOpts: sec,
		Brokers:   c.kafka.brokerList(),
		Topic:     c.kafka.topic,
		Examples:  c.examples,
		Logger:    logger,
		Progress: func(p audit.Progress) {
			var eta time.Duration
			if p.Rate > 0 {
				eta = time.Duration(float64(p.Total-p.Read) / p.Rate * float64(time.Second))
			}
			pr.show(p.Read, p.Total, p.Rate, eta, "records", "reading the topic")
		},
	})
	pr.done()
	if err != nil {
		return err
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printAudit(stdout, c.db.schema, rep)
	}
	if rep.Diverged() {
		return errDiverged
	}
	return nil
}

func printAudit(w io.Writer, schemaName string, rep *audit.Report) {
	fmt.Fprintf(w, "projection %s, topic %s\n", schemaName, rep.Topic)
	fmt.Fprintf(w, "  bound to   %s\n  broker has %s\n", rep.Identity, rep.Broker)
	if rep.IdentityProblem != "" {
		fmt.Fprintf(w, "  DIVERGED: %s\n", rep.IdentityProblem)
	}
	fmt.Fprintf(w, "\n%-9s %10s %12s %12s %10s\n", "PARTITION", "LOG START", "END", "APPLIED", "LAG")
	for _, p := range rep.Partitions {
		note := ""
		if p.Ahead {
			note = "  DIVERGED: applied past the end"
		}
		fmt.Fprintf(w, "%-9d %10d %12d %12d %10d%s\n", p.Partition, p.LogStart, p.End, p.Applied, p.Lag, note)
	}
	fmt.Fprintf(w, "\nrecords read           %d\n", rep.Records)
	fmt.Fprintf(w, "duplicates in topic    %d (suppressed)\n", rep.Duplicates)
	if rep.Decisions > 0 {
		fmt.Fprintf(w, "quarantine decisions   %d (control records, not events)\n", rep.Decisions)
	}
	fmt.Fprintf(w, "skipped events         %d\n", rep.Skipped)
	for _, s := range rep.SkippedExamples {
		fmt.Fprintf(w, "    partition %d offset %d event %s: below the applied position, neither processed nor quarantined\n", s.Partition, s.Offset, s.EventID)
	}
	if rep.Pruned > 0 {
		fmt.Fprintf(w, "pruned by retention    %d (written before %s)\n", rep.Pruned, rep.RetentionCutoff.Format(time.RFC3339))
	}
	fmt.Fprintf(w, "processed, no event    %d\n", rep.Orphans)
	for _, o := range rep.OrphanExamples {
		fmt.Fprintf(w, "    event %s (aggregate %s): processed, not in the topic\n", o.EventID, o.Aggregate)
	}
	if rep.OrphansBeforeStart > 0 {
		fmt.Fprintf(w, "processed, event deleted by the topic's retention  %d\n", rep.OrphansBeforeStart)
	}
	fmt.Fprintln(w, "\noutcomes")
	for _, k := range slices.Sorted(maps.Keys(rep.Outcomes)) {
		fmt.Fprintf(w, "  %-20s %d\n", k, rep.Outcomes[k])
	}
	if len(rep.Quarantine) > 0 {
		fmt.Fprintln(w, "quarantine (kind state)")
		for _, k := range slices.Sorted(maps.Keys(rep.Quarantine)) {
			fmt.Fprintf(w, "  %-20s %d\n", k, rep.Quarantine[k])
		}
	}
	verdict := "consistent: every event below the applied positions is processed or quarantined, and every processed event is in the topic"
	if rep.Diverged() {
		verdict = "DIVERGED"
	}
	fmt.Fprintf(w, "\n%s (audit took %v)\n", verdict, rep.Took.Round(time.Millisecond))
}
