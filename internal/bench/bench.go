// Package bench is `heed bench`: a self-contained benchmark of the pipeline on
// the embedded broker and a configured Postgres. Every phase measures in the
// same run and checks its result against the database before it reports:
//
//   - references: two consumers written by hand, with no heed code, on the
//     same events: peer_batched (a careful hand-written pipeline's batch
//     statement) and floor (the least any correct consumer writes: COPY of
//     the IDs and a summed upsert); see reference. Each runs as a franz-go
//     consumer of a topic of the drain's records (consumerBatched,
//     consumerFloor: the drain's ratios are to these) and on the events in
//     memory with no broker (Postgres alone);
//   - drain: the applier draining events produced straight to the topic (1%
//     duplicates), with random request IDs and again with time-ordered ones;
//   - transfers: transfers between accounts on different partitions, from
//     the topic through the applier, the outbox and the relay until every
//     one settled (its credit applied);
//   - rebuild: heed rebuild replaying such a topic into a fresh schema,
//     next to the floor (the COPY ceiling);
//   - naive: the same with one event per transaction;
//   - ingest: commands/s and latency over Connect with concurrent clients,
//     next to a handler that does not produce, on the same server stack;
//   - e2e: at a fixed offered load, the time from a command's ack to its
//     effect being readable in Postgres;
//   - rss: the resident memory of a separate `heed apply` process draining a
//     large topic.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/schema"
)

// Phases are the phases Run knows, in the order it runs them.
var Phases = []string{"references", "drain", "transfers", "rebuild", "naive", "ingest", "e2e", "rss"}

// Config sizes a run. DatabaseURL is required; zero values take the defaults
// documented on each field.
type Config struct {
	// DatabaseURL is a database the benchmark may create and drop schemas in.
	DatabaseURL string
	// Events is the number of deposits the references and drain phases write
	// (default 200,000).
	Events int
	// NaiveEvents is the number of deposits applied one per transaction
	// (default Events/40, at least 1,000).
	NaiveEvents int
	// Accounts is the number of accounts the deposits spread over (default 10,000).
	Accounts int
	// Partitions of every topic the benchmark creates (default 8).
	Partitions int32
	// Clients is the number of concurrent callers in the ingest phase and the
	// size of the caller pool in the e2e phase (default 64).
	Clients int
	// Duration is how long each ingest run and the e2e phase last (default 10s).
	Duration time.Duration
	// Rate is the commands/s offered in the e2e phase (default 5,000).
	Rate int
	// RSSEvents is the number of deposits the rss phase drains (default 2,000,000).
	RSSEvents int
	// Transfers is the number of transfers the transfers phase settles
	// (default 50,000), between Accounts accounts.
	Transfers int
	// HeedBinary is the heed executable the rss phase runs `heed apply` with
	// (default: this process's executable).
	HeedBinary string
	// Protocol the ingest clients speak: connect (the Connect protocol over
	// HTTP/1.1, the default), connect-h2 (the Connect protocol over HTTP/2
	// without TLS, as a Go client reaching heed over TLS would speak it) or
	// grpc (HTTP/2 without TLS).
	Protocol string
	// Applier holds the batch limits the applier runs with (Brokers, Topic and
	// Group are set by the benchmark); zero fields take the applier's defaults.
	Applier applier.Config
	// Ingest holds the producer settings of the ingest server (Linger,
	// Compression); Brokers and Topic are set by the benchmark.
	Ingest ingest.Config
	// Only, when not empty, runs just these phases (names from Phases).
	Only []string
	// Progress receives a line per step of long phases (default: discard).
	Progress io.Writer
	// Logger receives the components' logs (default: discard).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Events <= 0 {
		c.Events = 200_000
	}
	if c.NaiveEvents <= 0 {
		c.NaiveEvents = max(c.Events/40, 1000)
	}
	if c.Accounts <= 0 {
		c.Accounts = 10_000
	}
	if c.Partitions <= 0 {
		c.Partitions = 8
	}
	if c.Clients <= 0 {
		c.Clients = 64
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if c.Rate <= 0 {
		c.Rate = 5000
	}
	if c.RSSEvents <= 0 {
		c.RSSEvents = 2_000_000
	}
	if c.Transfers <= 0 {
		c.Transfers = 50_000
	}
	if c.Protocol == "" {
		c.Protocol = "connect"
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Applier = c.Applier.WithDefaults()
}

// Validate reports what to change in a Config's sizes and phases; Run also
// requires DatabaseURL.
func (c *Config) Validate() error {
	var errs []error
	if c.Protocol != "" && c.Protocol != "connect" && c.Protocol != "connect-h2" && c.Protocol != "grpc" {
		errs = append(errs, fmt.Errorf("protocol %q: use connect, connect-h2 or grpc", c.Protocol))
	}
	for _, p := range c.Only {
		if !slices.Contains(Phases, p) {
			errs = append(errs, fmt.Errorf("phase %q: use some of %s", p, strings.Join(Phases, ", ")))
		}
	}
	if c.Accounts > 0 && c.Events > 0 && c.Events < c.Accounts {
		errs = append(errs, fmt.Errorf("%d events over %d accounts: give at least one deposit per account (raise --events or lower --accounts)", c.Events, c.Accounts))
	}
	return errors.Join(errs...)
}

func (c *Config) runs(phase string) bool { return len(c.Only) == 0 || slices.Contains(c.Only, phase) }

// Result is what a run measured. Rates are per second over the measured
// interval; latencies are in milliseconds. Phases not run are zero.
type Result struct {
	Machine    string `json:"machine"`
	Postgres   string `json:"postgres"`
	Events     int    `json:"events"`
	Accounts   int    `json:"accounts"`
	Partitions int32  `json:"partitions"`

	// PeerBatched and Floor are the references (see reference), with random
	// request IDs: with the drain phase, each is the mean of its runs, one
	// before the drain and one after it, so that the machine's drift during
	// the phases weighs on both sides of the drain's ratios to them.
	PeerBatched     float64   `json:"peer_batched_events_per_s"`
	PeerBatchedRuns []float64 `json:"peer_batched_runs_events_per_s"`
	Floor           float64   `json:"floor_events_per_s"`
	FloorRuns       []float64 `json:"floor_runs_events_per_s"`
	// ConsumerReferences are the references reading the drain's records
	// from a topic (see consumerBatched): the figures the drain's ratios in
	// the table are to. PeerBatched and Floor are the same writes with no
	// broker: Postgres alone.
	ConsumerReferences

	// Applier is the drain with random request IDs.
	Applier        float64 `json:"applier_events_per_s"`
	ApplierRecords int     `json:"applier_records"`
	ApplierDups    int64   `json:"applier_duplicates_skipped"`
	// ApplyRate counts from the drain's first committed batch, leaving out
	// the applier's start (joining the group, the first fetch), which takes
	// ApplierStartup milliseconds: the rate the references are comparable
	// with, which have no start.
	ApplyRate            float64 `json:"apply_rate_events_per_s"`
	ApplierStartup       float64 `json:"applier_startup_ms"`
	ApplierToPeerBatched float64 `json:"applier_to_peer_batched_ratio"`
	ApplyRateToFloor     float64 `json:"apply_rate_to_floor_ratio"`
	ApplyRateToPeer      float64 `json:"apply_rate_to_peer_batched_ratio"`
	// What Postgres spent per event (per record for the drain) in the first
	// run of each reference and in the drain: CPU time of the postgres
	// processes on this machine (0 for a remote server) and WAL bytes.
	ApplierPostgres     perEvent `json:"applier_postgres_per_event"`
	PeerBatchedPostgres perEvent `json:"peer_batched_postgres_per_event"`
	FloorPostgres       perEvent `json:"floor_postgres_per_event"`
	ApplierToFloor      float64  `json:"applier_to_floor_ratio"`
	// OrderedApplier and OrderedFloor are the drain and the floor again with
	// time-ordered (UUIDv7) request IDs: what such IDs buy.
	OrderedApplier float64 `json:"ordered_ids_applier_events_per_s"`
	OrderedFloor   float64 `json:"ordered_ids_floor_events_per_s"`
	// ApplierCPUPerEvent and ApplierFaultsPerEvent are this process's CPU time
	// and minor page faults per record while the applier drained (the broker
	// serving its fetches included).
	ApplierCPUPerEvent    float64 `json:"applier_cpu_us_per_event"`
	ApplierFaultsPerEvent float64 `json:"applier_page_faults_per_event"`
	// Rebuild is heed rebuild replaying RebuildEvents records (random
	// request IDs, 1% duplicates) into a fresh schema, from its start to the
	// topic's end; RebuildToFloor its ratio to the floor, the COPY ceiling.
	Rebuild         float64  `json:"rebuild_events_per_s"`
	RebuildEvents   int      `json:"rebuild_records"`
	RebuildToFloor  float64  `json:"rebuild_to_floor_ratio"`
	RebuildPostgres perEvent `json:"rebuild_postgres_per_event"`

	// Transfers transfers between TransferAccounts accounts, a share
	// TransferCrossPartition of them between accounts on different
	// partitions, settled end to end (debit applied, credit relayed and
	// applied) at TransfersPerS, TransferEventsPerS records applied per
	// second (debits and credits), from the applier's start to the last
	// credit: TransferEventsToDrain times the drain's events/s. The relay
	// produced TransferRelayed credits; the applier skipped TransferDups.
	Transfers              int     `json:"transfers"`
	TransferAccounts       int     `json:"transfer_accounts"`
	TransferCrossPartition float64 `json:"transfer_cross_partition_share"`
	TransfersPerS          float64 `json:"transfers_per_s"`
	TransferEventsPerS     float64 `json:"transfer_events_per_s"`
	TransferEventsToDrain  float64 `json:"transfer_events_to_drain_ratio"`
	TransferRelayed        int64   `json:"transfer_relayed"`
	TransferDups           int64   `json:"transfer_duplicates_skipped"`

	NaiveEvents    int     `json:"naive_events"`
	Naive          float64 `json:"naive_events_per_s"`
	ApplierToNaive float64 `json:"applier_to_naive_ratio"`

	Clients      int     `json:"clients"`
	Protocol     string  `json:"protocol"`
	IngestRPS    float64 `json:"ingest_rps"`
	IngestP50    float64 `json:"ingest_p50_ms"`
	IngestP99    float64 `json:"ingest_p99_ms"`
	NoopRPS      float64 `json:"noop_rps"`
	NoopP50      float64 `json:"noop_p50_ms"`
	NoopP99      float64 `json:"noop_p99_ms"`
	IngestToNoop float64 `json:"ingest_to_noop_ratio"`
	// CPU time of this process (callers, server, producer and broker) per
	// command answered, for each handler: on a machine the load saturates,
	// the two rates stand in inverse proportion to these.
	IngestCPUPerCommand float64 `json:"ingest_cpu_us_per_command"`
	NoopCPUPerCommand   float64 `json:"noop_cpu_us_per_command"`
	// Records per produce request the ingest publisher sent.
	IngestRecordsPerProduce float64 `json:"ingest_records_per_produce_request"`

	E2EOffered  int     `json:"e2e_offered_per_s"`
	E2EAchieved float64 `json:"e2e_achieved_per_s"`
	E2ECommands int     `json:"e2e_commands"`
	E2EAckP99   float64 `json:"e2e_ack_p99_ms"`
	E2EP50      float64 `json:"e2e_p50_ms"`
	E2EP99      float64 `json:"e2e_p99_ms"`
	E2EMax      float64 `json:"e2e_max_ms"`
	E2EBatches  int64   `json:"e2e_applier_transactions"`

	RSSEvents    int       `json:"rss_events"`
	RSSApplier   float64   `json:"rss_events_per_s"`
	RSSPeakMiB   float64   `json:"rss_peak_mib"`
	RSSByQuarter []float64 `json:"rss_mib_at_25_50_75_100_pct"`
	// AuditPeakMiB is the peak RSS of heed audit over the rss phase's
	// topic and projection, which took AuditSeconds.
	AuditPeakMiB float64 `json:"audit_peak_rss_mib"`
	AuditSeconds float64 `json:"audit_seconds"`
}

// env is what every phase shares: the broker, the database and the config.
type env struct {
	cfg    Config
	broker *devstack.Broker
	admin  *pgxpool.Pool
	run    string // a random suffix naming this run's schemas, topics and groups
}

// Run runs the configured phases and returns what they measured. It fails
// with the first phase that fails, including a phase whose result is wrong
// (lost or doubly applied events): a benchmark that loses data measures
// nothing.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.DatabaseURL == "" {
		return nil, errors.New("no database: pass --database-url (bench creates and drops its own schemas there)")
	}
	cfg.setDefaults()
	broker, err := devstack.StartBroker(ctx, devstack.BrokerConfig{Listen: "127.0.0.1:0", Partitions: cfg.Partitions, Logger: cfg.Logger.With("component", "broker")})
	if err != nil {
		return nil, err
	}
	defer broker.Close()
	admin, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg.DatabaseURL, err)
	}
	defer admin.Close()
	e := &env{cfg: cfg, broker: broker, admin: admin, run: randomSuffix()}

	r := &Result{
		Machine:    fmt.Sprintf("%d CPUs, %s/%s, %s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version()),
		Events:     cfg.Events,
		Accounts:   cfg.Accounts,
		Partitions: cfg.Partitions,
	}
	if err := admin.QueryRow(ctx, `SHOW server_version`).Scan(&r.Postgres); err != nil {
		return nil, fmt.Errorf("query the Postgres version at %s: %w", cfg.DatabaseURL, err)
	}
	var data *dataset
	if cfg.runs("references") || cfg.runs("drain") {
		e.progress("generating %d opens and %d deposits", cfg.Accounts, cfg.Events)
		if data, err = newDataset(cfg.Accounts, cfg.Events, randomIDs); err != nil {
			return nil, err
		}
	}
	phases := []struct {
		name string
		run  func(context.Context) error
	}{
		{"references", func(ctx context.Context) error { return e.references(ctx, data, r) }},
		{"drain", func(ctx context.Context) error {
			if err := e.drain(ctx, data, r); err != nil {
				return err
			}
			if cfg.runs("references") {
				e.settle(ctx) // the drain dropped the dataset; referencesAgain makes its own
				if err := e.referencesAgain(ctx, r); err != nil {
					return err
				}
			}
			e.settle(ctx)
			return e.drainOrdered(ctx, r)
		}},
		{"transfers", func(ctx context.Context) error { return e.transfers(ctx, r) }},
		{"rebuild", func(ctx context.Context) error { return e.rebuildPhase(ctx, r) }},
		{"naive", func(ctx context.Context) error { return e.naive(ctx, r) }},
		{"ingest", func(ctx context.Context) error { return e.ingest(ctx, r) }},
		{"e2e", func(ctx context.Context) error { return e.e2e(ctx, r) }},
		{"rss", func(ctx context.Context) error { return e.rss(ctx, r) }},
	}
	for _, p := range phases {
		if !cfg.runs(p.name) {
			continue
		}
		e.settle(ctx)
		start := time.Now()
		var err error
		// Labelled, so that a CPU profile of the run (heed bench
		// --cpuprofile) splits by phase: go tool pprof -tagfocus phase=drain.
		pprof.Do(ctx, pprof.Labels("phase", p.name), func(ctx context.Context) { err = p.run(ctx) })
		if err != nil {
			return r, fmt.Errorf("%s phase: %w", p.name, err)
		}
		e.progress("%s phase done in %s", p.name, time.Since(start).Round(time.Millisecond))
		if p.name == "drain" || !cfg.runs("drain") {
			// Only references and drain read the dataset: hundreds of MB of
			// records that the GC would otherwise mark again and again
			// through the later phases.
			data = nil
		}
	}
	if r.PeerBatched > 0 && r.Applier > 0 {
		r.ApplierToPeerBatched = r.Applier / r.PeerBatched
	}
	if r.Floor > 0 && r.Applier > 0 {
		r.ApplierToFloor = r.Applier / r.Floor
		r.ApplyRateToFloor = r.ApplyRate / r.Floor
	}
	if r.PeerBatched > 0 && r.ApplyRate > 0 {
		r.ApplyRateToPeer = r.ApplyRate / r.PeerBatched
	}
	r.consumerRatios(r)
	if r.Floor > 0 && r.Rebuild > 0 {
		r.RebuildToFloor = r.Rebuild / r.Floor
	}
	if r.TransferEventsPerS > 0 && r.Applier > 0 {
		r.TransferEventsToDrain = r.TransferEventsPerS / r.Applier
	}
	if r.Naive > 0 && r.Applier > 0 {
		r.ApplierToNaive = r.Applier / r.Naive
	}
	if r.NoopRPS > 0 && r.IngestRPS > 0 {
		r.IngestToNoop = r.IngestRPS / r.NoopRPS
	}
	return r, nil
}

// settle starts a phase clean of the ones before it: Postgres writes out
// what they left dirty (CHECKPOINT), so that a checkpoint of the references'
// and drain's writes does not land in a later phase's measurement, and this
// process collects their garbage. CHECKPOINT needs a superuser or
// pg_checkpoint; without either the phases run anyway, and say so.
func (e *env) settle(ctx context.Context) {
	if _, err := e.admin.Exec(ctx, "CHECKPOINT"); err != nil && ctx.Err() == nil {
		e.progress("CHECKPOINT failed (%v); grant pg_checkpoint to the bench's user for phases that do not pay for each other's writes", err)
	}
	runtime.GC()
}

func (e *env) progress(format string, args ...any) {
	fmt.Fprintf(e.cfg.Progress, "bench: "+format+"\n", args...)
}

func randomSuffix() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// name is this run's name for a phase's schema, topic or group.
func (e *env) name(phase string) string { return "heed_bench_" + phase + "_" + e.run }

// freshSchema creates and migrates a schema of the phase's own, and returns a
// pool whose search_path is it and a function that closes the pool and drops
// the schema.
func (e *env) freshSchema(ctx context.Context, phase string, conns int32) (*pgxpool.Pool, string, func(), error) {
	name := e.name(phase)
	pool, err := schema.Connect(ctx, e.cfg.DatabaseURL, name, conns)
	if err != nil {
		return nil, "", nil, err
	}
	drop := func() {
		pool.Close()
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := e.admin.Exec(dctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{name}.Sanitize()+` CASCADE`); err != nil {
			e.cfg.Logger.Warn("drop the benchmark's schema", "schema", name, "err", err)
		}
	}
	if err := schema.Migrate(ctx, pool, name, ledger.Schema, nil); err != nil {
		drop()
		return nil, "", nil, err
	}
	return pool, name, drop, nil
}

// topic creates a topic of the phase's own and returns its name, a producer
// client for it and a function that deletes it (freeing the broker's memory).
func (e *env) topic(ctx context.Context, phase string) (string, *kgo.Client, func(), error) {
	name := e.name(phase)
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(e.broker.Addrs()...),
		kgo.DefaultProduceTopic(name),
		kgo.ProducerBatchMaxBytes(1<<20),
		kgo.MaxBufferedRecords(100_000),
	)
	if err != nil {
		return "", nil, nil, err
	}
	if _, err := ingest.EnsureTopic(ctx, cl, name, e.cfg.Partitions, -1); err != nil {
		cl.Close()
		return "", nil, nil, err
	}
	del := func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := kadm.NewClient(cl).DeleteTopics(dctx, name); err != nil {
			e.cfg.Logger.Warn("delete the benchmark's topic", "topic", name, "err", err)
		}
		cl.Close()
	}
	return name, cl, del, nil
}

// produce writes recs with cl, in chunks, reporting progress.
func (e *env) produce(ctx context.Context, cl *kgo.Client, recs []*kgo.Record) error {
	const chunk = 50_000
	for i := 0; i < len(recs); i += chunk {
		if err := cl.ProduceSync(ctx, recs[i:min(i+chunk, len(recs))]...).FirstErr(); err != nil {
			return fmt.Errorf("produce to the embedded broker: %w", err)
		}
		if len(recs) > 4*chunk && (i/chunk)%10 == 9 {
			e.progress("produced %d/%d records", i+chunk, len(recs))
		}
	}
	return nil
}

// applierConfig is c (batch limits, with defaults) for topic and group on the
// embedded broker.
func (e *env) applierConfig(c applier.Config, topic, group string) applier.Config {
	c.Brokers, c.Topic, c.Group, c.Logger = e.broker.Addrs(), topic, group, e.cfg.Logger.With("component", "applier")
	return c
}

// checkLedger verifies the ledger tables after the applier applied: the
// balances sum to deposits, every account exists and processed_events holds
// exactly events rows. q is a pool or a transaction whose search_path is the
// phase's schema.
func checkLedger(ctx context.Context, q querier, accounts int, deposits, events int64) error {
	return checkLedgerIn(ctx, q, "processed_events", accounts, deposits, events)
}

type querier interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}

// checkLedgerIn is checkLedger with the processed IDs in table.
func checkLedgerIn(ctx context.Context, q querier, table string, accounts int, deposits, events int64) error {
	var sum, rows, processed int64
	err := q.QueryRow(ctx, `SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT count(*) FROM accounts),
(SELECT count(*) FROM `+pgx.Identifier{table}.Sanitize()+`)`).Scan(&sum, &rows, &processed)
	if err != nil {
		return fmt.Errorf("read the ledger back: %w", err)
	}
	if sum != deposits || rows != int64(accounts) || processed != events {
		return fmt.Errorf("WRONG RESULT: balances sum to %d (want %d), %d accounts (want %d), %d processed events (want %d)",
			sum, deposits, rows, accounts, processed, events)
	}
	return nil
}

// exe is the heed binary for child processes.
func (c *Config) exe() (string, error) {
	if c.HeedBinary != "" {
		return c.HeedBinary, nil
	}
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the heed binary for the rss phase: %w (pass --heed-binary)", err)
	}
	return p, nil
}
