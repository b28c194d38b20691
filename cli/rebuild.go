package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/rebuild"
	"github.com/heed-dev/heed/schema"
)

var rebuildVerb = verb{
	name:    "rebuild",
	summary: "replay the topic into a fresh schema while the live projection runs; --verify compares, --swap makes it live",
	example: "heed rebuild --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed --verify --swap",
	new: func(d *heed.Domain) command {
		return &rebuildCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}, apply: applyFlags{dom: d}}
	},
}

type rebuildCmd struct {
	kafka   kafkaFlags
	db      dbFlags
	apply   applyFlags
	log     logFlags
	into    string
	old     string
	verify  bool
	swap    bool
	dropOld bool
	hold    time.Duration
	every   time.Duration
}

func (c *rebuildCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the live projection, e.g. postgres://postgres@127.0.0.1:5432/heed")
	fs.StringVar(&c.into, "into", "", "the schema to rebuild into, created if needed; a rebuild stopped earlier resumes there (default: --schema + \"_rebuild\")")
	fs.StringVar(&c.old, "old-schema", "", "the name --swap gives the live schema it replaces, and the schema --drop-old drops (default: --schema + \"_old\")")
	fs.BoolVar(&c.verify, "verify", false, "compare the rebuilt projection with the live one at the same positions, table by table; exit 1 listing the first differing rows if they differ")
	fs.BoolVar(&c.swap, "swap", false, "make the rebuilt projection live, atomically: running serve and apply follow it; the live one is kept as --old-schema (with --verify: only if they are equal)")
	fs.BoolVar(&c.dropOld, "drop-old", false, "drop --old-schema, the projection an earlier --swap retired, and do nothing else")
	fs.DurationVar(&c.hold, "hold-timeout", time.Minute, "--verify and --swap: how long the live appliers may be held while the rebuild reaches their positions")
	fs.DurationVar(&c.every, "progress-interval", 10*time.Second, "how often progress is logged when stderr is not a terminal (a terminal gets a progress line every second)")
	fs.StringVar(&c.apply.group, "group", c.db.dom.DefaultGroup(), "the live applier group; the rebuild's own group is named after it and --into")
	c.apply.registerBatch(fs, 20000, 16<<20) // a replay's batches: bigger than the live applier's
	c.log.register(fs)
}

func (c *rebuildCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if c.into == "" {
		c.into = c.db.schema + "_rebuild"
	}
	if c.old == "" {
		c.old = c.db.schema + "_old"
	}
	if err := firstError(c.db.validate(), c.apply.validateBatch(), positive("hold-timeout", c.hold), positive("progress-interval", c.every),
		nameFlag("into", c.into), nameFlag("old-schema", c.old)); err != nil {
		return err
	}
	if c.dropOld {
		if c.verify || c.swap {
			return errors.New("--drop-old does nothing else: run it alone, after the swap")
		}
		pool, err := schema.Connect(ctx, c.db.url, c.db.schema, 2)
		if err != nil {
			return err
		}
		defer pool.Close()
		if err := rebuild.DropOld(ctx, pool, c.old); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "dropped schema %s, the projection an earlier swap retired\n", c.old)
		return nil
	}
	acfg := applierConfig(logger, c.kafka, c.apply)
	acfg.KafkaLogger = slog.New(minLevel{Handler: logger.Handler(), min: slog.LevelWarn}).With("component", "kafka")
	if acfg.KafkaOpts, err = c.kafka.sec.Opts(); err != nil {
		return err
	}
	pr := newProgress(stderr, c.every, logger)
	r, err := rebuild.Open(ctx, rebuild.Config{
		DatabaseURL: c.db.url,
		Live:        c.db.schema,
		Into:        c.into,
		Sets:        c.db.dom.Sets(),
		Handler:     c.db.dom.Handler(),
		Applier:     acfg,
		Progress:    pr.report,
		Logger:      logger,
	})
	if err != nil {
		return err
	}
	defer r.Close()
	if c.swap {
		if err := r.CanSwap(ctx, c.old); err != nil {
			return err
		}
	}
	started := time.Now()
	toLive := c.verify || c.swap
	at, err := r.CatchUp(ctx, toLive)
	pr.done()
	if err != nil {
		return err
	}
	s := r.Stats()
	fmt.Fprintf(stdout, "rebuilt %s from %s in %v: %s, at %s (%s)\n",
		c.into, c.kafka.topic, time.Since(started).Round(100*time.Millisecond), recordsText(s),
		positionsText(at), map[bool]string{true: "the live projection's positions", false: "the topic's end"}[toLive])
	if c.verify && !c.swap {
		rep, err := r.Verify(ctx, c.hold)
		if rep != nil {
			printReport(stdout, rep)
		}
		if err != nil {
			return fmt.Errorf("%w (to find why, compare the rows listed; rebuild again after a fix with a fresh --into)", err)
		}
		fmt.Fprintf(stdout, "verified: %s equals %s at %s\n", c.into, c.db.schema, positionsText(rep.Positions))
		return nil
	}
	if c.swap {
		res, err := r.Swap(ctx, rebuild.SwapOptions{Old: c.old, Verify: c.verify, Timeout: c.hold})
		if res != nil && res.Report != nil {
			printReport(stdout, res.Report)
		}
		if errors.Is(err, rebuild.ErrDiffers) {
			return fmt.Errorf("%w (the live projection holds what the topic does not explain: rows written outside heed, a handler reading the clock or another table, a bug; compare the rows listed; to make the topic's version live anyway, --swap without --verify)", err)
		}
		if err != nil {
			return err
		}
		if res.OtherIncarnation {
			fmt.Fprintf(stdout, "the live projection was built from another incarnation of %s: replaced without a comparison\n", c.kafka.topic)
		}
		if res.AheadOfTopic {
			fmt.Fprintf(stdout, "the live projection held records %s no longer has (a broker restored from an older backup?): replaced at the topic's end without a comparison; the commands of the lost records are lost with them\n", c.kafka.topic)
		}
		fmt.Fprintf(stdout, "swapped at %s: schema %s is the rebuilt projection now; the one it replaced is %s (drop it with heed rebuild --drop-old)\n",
			positionsText(res.Positions), c.db.schema, c.old)
		return nil
	}
	fmt.Fprintf(stdout, "compare it with the live projection with --verify, make it live with --swap (both resume from here)\n")
	return nil
}

// nameFlag checks a schema-name flag.
func nameFlag(flag, v string) error {
	if err := schema.Validate(v); err != nil {
		return fmt.Errorf("--%s: %w", flag, err)
	}
	return nil
}

func positionsText(m map[int32]int64) string {
	var b strings.Builder
	for i, p := range slices.Sorted(maps.Keys(m)) {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d:%d", p, m[p])
	}
	return "positions " + b.String()
}

func printReport(w io.Writer, rep *rebuild.Report) {
	fmt.Fprintf(w, "%-22s %12s %12s  %s\n", "TABLE", "LIVE ROWS", "REBUILT ROWS", "RESULT")
	for _, t := range rep.Tables {
		result := "equal"
		switch {
		case t.Missing != "":
			result = "missing in the " + t.Missing + " schema"
		case !t.Equal:
			result = "DIFFERS"
		}
		fmt.Fprintf(w, "%-22s %12d %12d  %s\n", t.Table, t.LiveRows, t.RebuiltRows, result)
		for _, row := range t.OnlyLive {
			fmt.Fprintf(w, "    only live:    %s\n", row)
		}
		for _, row := range t.OnlyRebuilt {
			fmt.Fprintf(w, "    only rebuilt: %s\n", row)
		}
	}
}

// progress shows a rebuild's progress: a line rewritten every second on a
// terminal, a log line every interval otherwise.
type progress struct {
	w      io.Writer
	tty    bool
	every  time.Duration
	logger *slog.Logger
	last   time.Time
	drawn  bool
}

func newProgress(w io.Writer, every time.Duration, logger *slog.Logger) *progress {
	return &progress{w: w, tty: isTerminal(w), every: every, logger: logger}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func (p *progress) report(pr rebuild.Progress) {
	p.show(pr.Applied, pr.Applied+pr.Left(), pr.Rate, pr.ETA, "records", p.behind(pr))
}

// show draws or logs done of total with its rate and time left.
func (p *progress) show(done, total int64, rate float64, eta time.Duration, unit, detail string) {
	if p.tty {
		pct := 100.0
		if total > 0 {
			pct = min(100*float64(done)/float64(total), 100)
		}
		const width = 30
		filled := int(pct / 100 * width)
		bar := strings.Repeat("#", filled) + strings.Repeat(".", width-filled)
		etaText := "-"
		if eta > 0 {
			etaText = eta.Round(time.Second).String()
		}
		fmt.Fprintf(p.w, "\r[%s] %5.1f%% %d/%d %s, %.0f/s, ETA %s, %s\033[K", bar, pct, done, total, unit, rate, etaText, detail)
		p.drawn = true
		return
	}
	if time.Since(p.last) < p.every {
		return
	}
	p.last = time.Now()
	p.logger.Info("progress", unit, done, "of", total, "rate_per_s", int64(rate), "eta", eta.Round(time.Second), "detail", detail)
}

// behind lists the partitions not at their target, with how far they are.
func (p *progress) behind(pr rebuild.Progress) string {
	var parts []string
	for _, part := range slices.Sorted(maps.Keys(pr.Targets)) {
		if d := pr.Targets[part] - pr.Positions[part]; d > 0 {
			parts = append(parts, fmt.Sprintf("p%d:%d/%d", part, pr.Positions[part], pr.Targets[part]))
		}
	}
	if len(parts) == 0 {
		return "all partitions at their target"
	}
	if len(parts) > 4 {
		parts = append(parts[:4], fmt.Sprintf("+%d more", len(parts)-4))
	}
	return strings.Join(parts, " ")
}

func (p *progress) done() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}

// recordsText says what became of the records a rebuild read, in parts that
// add up to the total: applied (rejected ones included), duplicates,
// quarantined, and, when there are any, conflicting reuses of a request ID
// and records parked behind a quarantined one.
func recordsText(s applier.Stats) string {
	parts := []string{fmt.Sprintf("%d applied", s.Applied), fmt.Sprintf("%d duplicates", s.Duplicates), fmt.Sprintf("%d quarantined", s.Quarantined)}
	if s.Conflicts > 0 {
		parts = append(parts, fmt.Sprintf("%d reusing a request ID with other content", s.Conflicts))
	}
	if s.Parked > 0 {
		parts = append(parts, fmt.Sprintf("%d parked behind a quarantined record", s.Parked))
	}
	return fmt.Sprintf("%d records (%s)", s.Applied+s.Duplicates+s.Quarantined+s.Conflicts+s.Parked, strings.Join(parts, ", "))
}

// minLevel passes on the records of its Handler from min up: the Kafka
// client's group-join chatter is not what a one-shot rebuild reports.
type minLevel struct {
	slog.Handler
	min slog.Level
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{Handler: h.Handler.WithGroup(name), min: h.min}
}
