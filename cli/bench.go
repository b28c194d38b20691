package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/bench"
)

var benchVerb = verb{
	name:    "bench",
	summary: "measure the pipeline on this machine: hand-written references, applier drain, transfers, ingest, end to end, memory",
	example: "heed bench --duration 5s --rss-events 200000",
	new:     func(d *heed.Domain) command { return &benchCmd{apply: applyFlags{dom: d}} },
}

type benchCmd struct {
	dbURL         string
	dataDir       string
	events        int
	naiveEvents   int
	accounts      int
	partitions    int
	clients       int
	duration      time.Duration
	rate          int
	rssEvents     int
	transfers     int
	phases        string
	protocol      string
	json          bool
	heedBinary    string
	cpuProfile    string
	apply         applyFlags
	produceLinger time.Duration
	compression   string
	log           logFlags
}

func (c *benchCmd) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.dbURL, "database-url", "", "Postgres URL bench may create and drop schemas in; empty: the local server at 127.0.0.1:5432 (database heed), else a private cluster under --data-dir")
	fs.StringVar(&c.dataDir, "data-dir", defaultDataDir, "where a private Postgres is kept if one is needed")
	fs.IntVar(&c.events, "events", 200_000, "deposits written in the references and drain phases")
	fs.IntVar(&c.naiveEvents, "naive-events", 0, "deposits applied one per transaction (default: events/40, at least 1,000)")
	fs.IntVar(&c.accounts, "accounts", 10_000, "accounts the deposits and the transfers spread over")
	fs.IntVar(&c.partitions, "partitions", defaultPartitions, "partitions of every benchmark topic")
	fs.IntVar(&c.clients, "clients", 64, "concurrent callers in the ingest phase (and the caller pool of the e2e phase)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "length of each ingest run and of the e2e phase")
	fs.IntVar(&c.rate, "rate", 5000, "commands/s offered in the e2e phase")
	fs.IntVar(&c.rssEvents, "rss-events", 2_000_000, "deposits a separate heed apply process drains while its memory is sampled")
	fs.IntVar(&c.transfers, "transfers", 50_000, "transfers the transfers phase settles end to end (debit, outbox, relay, credit), between --accounts accounts")
	fs.StringVar(&c.phases, "phases", strings.Join(bench.Phases, ","), "comma-separated phases to run")
	fs.StringVar(&c.protocol, "protocol", "connect", "what the ingest clients speak: connect (HTTP/1.1), connect-h2 (Connect over HTTP/2 without TLS) or grpc (HTTP/2)")
	fs.BoolVar(&c.json, "json", false, "print one JSON object instead of the table")
	fs.StringVar(&c.heedBinary, "heed-binary", "", "heed executable the rss phase runs (default: this one)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (server, applier, broker, clients) to this file, its samples labelled by phase and ingest handler (go tool pprof -tags)")
	c.apply.registerBatch(fs, 4000, 4<<20)
	fs.DurationVar(&c.produceLinger, "produce-linger", ingest.DefaultLinger, lingerUsage)
	fs.StringVar(&c.compression, "compression", "none", "ingest record batch compression: none, gzip, snappy, lz4 or zstd")
	c.log.registerLevel(fs, "warn")
}

func (c *benchCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	cfg := bench.Config{
		Events:      c.events,
		NaiveEvents: c.naiveEvents,
		Accounts:    c.accounts,
		Partitions:  int32(c.partitions),
		Clients:     c.clients,
		Duration:    c.duration,
		Rate:        c.rate,
		RSSEvents:   c.rssEvents,
		Transfers:   c.transfers,
		HeedBinary:  c.heedBinary,
		Protocol:    c.protocol,
		Ingest:      ingest.Config{Linger: producerLinger(c.produceLinger), Compression: c.compression},
		Progress:    stderr,
		Logger:      logger,
	}
	cfg.Applier.MaxBatchRecords = c.apply.batchRecords
	cfg.Applier.MaxBatchBytes = c.apply.batchBytes
	cfg.Applier.Linger = c.apply.batchLinger
	cfg.Applier.Concurrency = c.apply.concurrency
	for _, p := range strings.Split(c.phases, ",") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.Only = append(cfg.Only, p)
		}
	}
	if err := c.validate(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}

	pg, err := devstack.ResolvePostgres(ctx, devstack.PostgresConfig{URL: c.dbURL, DataDir: c.dataDir, Logger: logger})
	if err != nil {
		return err
	}
	defer pg.Close()
	cfg.DatabaseURL = pg.URL()
	fmt.Fprintf(stderr, "bench: postgres %s; phases %s\n", pg.Source(), strings.Join(cfg.Only, ", "))
	if c.cpuProfile != "" {
		f, err := os.Create(c.cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	res, err := bench.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	return bench.WriteTable(stdout, res, cfg)
}

func (c *benchCmd) validate() error {
	checks := []struct {
		name string
		v    int
		min  int
	}{
		{"--events", c.events, 1}, {"--accounts", c.accounts, 1}, {"--partitions", c.partitions, 1},
		{"--clients", c.clients, 1}, {"--rate", c.rate, 1}, {"--rss-events", c.rssEvents, 1}, {"--transfers", c.transfers, 1},
		{"--naive-events", c.naiveEvents, 0},
	}
	for _, ch := range checks {
		if ch.v < ch.min {
			return fmt.Errorf("%s %d: must be at least %d", ch.name, ch.v, ch.min)
		}
	}
	return firstError(
		positive("duration", c.duration),
		c.apply.validateBatch(),
		notNegative("produce-linger", c.produceLinger),
		validateCompression(c.compression),
	)
}
