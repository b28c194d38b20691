// Package applier applies the events of a Kafka topic to Postgres, exactly once
// in effect. It is domain-agnostic: a Handler decodes and applies events.
//
// One consumer group member runs one worker goroutine per assigned partition.
// A worker applies its partition's records in batches, each in one database
// transaction that
//   - moves the partition's applied position by compare-and-set (so a stale
//     member whose partition moved elsewhere cannot commit a late batch),
//   - claims the batch's event IDs in the processed-event table (dedup),
//   - applies the new events through the Handler,
//   - writes the follow-up events they emit to the outbox (Result.Emits;
//     package outbox publishes them after the commit),
//   - quarantines records that can never apply,
//
// and only after that transaction commits are the records marked for the Kafka
// offset commit. On assignment a partition resumes from its applied position in
// Postgres; the Kafka commit serves lag tools. Transient failures are retried
// with exponential backoff forever: a partition never skips a record silently.
//
// The transaction runs on one connection as pipelined round trips: BEGIN, the
// compare-and-set, the claim and the handler's reads travel in the first; the
// handler's writes, the quarantine and COMMIT in the last. A Handler that also
// implements BatchHandler thus costs two round trips per batch, whatever its
// size.
package applier

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"

	"github.com/heed-dev/heed/envelope"
	"github.com/heed-dev/heed/internal/lograte"

	"embed"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations for the applier's tables (applied
// positions, quarantine, outbox).
var Migrations, _ = fs.Sub(migrations, "migrations")

// Config configures an Applier. Brokers, Topic and Group are required.
type Config struct {
	Brokers []string
	Topic   string
	Group   string
	// MaxBatchRecords bounds the records applied in one transaction (default 4000).
	MaxBatchRecords int
	// MaxBatchBytes bounds the record bytes applied in one transaction (default 4 MiB).
	MaxBatchBytes int
	// Linger is how long a partition waits for more records before applying a
	// batch smaller than the limits (default 0: apply what has arrived).
	Linger time.Duration
	// Concurrency bounds how many partitions apply a batch at the same time, each
	// in its own transaction on its own connection (default 4). More than the
	// database has cores to spare makes batches contend rather than overlap;
	// the pool needs at least this many connections.
	Concurrency int
	// ShutdownGrace bounds how long a partition being released (revoked,
	// lost, or Run's context ended) waits for its in-flight batch to commit
	// before rolling it back (default 10s). Keep it well below the group's
	// rebalance timeout.
	ShutdownGrace time.Duration
	// BatchTimeout bounds one attempt at a batch transaction, so that a
	// connection that stopped answering (a black-holed network, a server
	// that hangs) frees its slot; the batch is then retried (default 30s).
	BatchTimeout time.Duration
	// SessionTimeout is how long the group waits for a member that stopped
	// heartbeating (a SIGKILL, a lost host) before it hands its partitions to
	// the others (default 10s; Kafka's client default is 45s, which left
	// partitions idle that long after a crash). A member that stops cleanly
	// leaves the group at once.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long a rebalance waits for every member to
	// rejoin, which includes finishing in-flight batches of revoked
	// partitions: it must exceed ShutdownGrace (default ShutdownGrace + 20s).
	RebalanceTimeout time.Duration
	// InstanceID, when set, makes this member a static member of the group
	// (Kafka's group.instance.id): restarted with the same ID within the
	// session timeout, it gets its partitions back without a rebalance. A
	// static member does not leave the group when it stops: its partitions
	// wait for it (or for the session timeout). Give each applier its own,
	// stable ID (a StatefulSet's pod name); two running with one ID fence
	// each other out. Empty (the default): a dynamic member.
	InstanceID string
	// ServerSideGroup uses KIP-848 consumer groups (Kafka 4.0+): the
	// coordinator assigns partitions, members join and leave without a
	// group-wide rebalance. The session timeout is then the broker's
	// (group.consumer.session.timeout.ms), not SessionTimeout.
	ServerSideGroup bool
	// DedupWindow is how far back in record time a processed event makes
	// a later one with its ID a duplicate (see package dedup): further
	// back, the later one is a new command, applied again. 0: no window,
	// processed events stand forever. It is recorded in the projection at
	// first use, and an applier with another one refuses to start
	// (ErrWindowChanged): retention prunes by it (see package retention).
	DedupWindow time.Duration
	// StallTimeout is how long an assigned partition that has records
	// waiting in the topic may go without its applied position moving
	// before it counts as stalled (Stalled; metrics and readiness). A
	// stalled partition whose worker got nothing to apply has its fetching
	// recovered: resumed and re-seeked, then, if it still does not move
	// within another StallTimeout, the member rejoins the group (default
	// 5s).
	StallTimeout time.Duration
	// Logger receives the applier's logs (default: discard).
	Logger *slog.Logger
	// KafkaLogger receives the Kafka client's logs (default: Logger, with
	// component=kafka). heed rebuild, a one-shot tool, keeps only their
	// warnings.
	KafkaLogger *slog.Logger
	// KafkaOpts are added to the Kafka client's options (TLS, SASL, hooks).
	KafkaOpts []kgo.Opt
	// Observer, if set, is told of every committed batch and every retried
	// attempt (metrics, traces).
	Observer Observer
	// IDs derives the event IDs of the follow-ups handlers emit
	// (Result.Emits) from their request IDs: the domain's ID space
	// (default: envelope.LegacySpace, the ledger's).
	IDs envelope.IDSpace
	// MaxEmitBytes bounds a follow-up's record (value, key and headers):
	// an emit larger than this quarantines the event that emits it, since
	// the relay could never produce it (default DefaultMaxEmitBytes; keep
	// it at or below the topic's max.message.bytes).
	MaxEmitBytes int
	// OnEmit, if set, is called after a batch of partition that wrote
	// follow-ups to the outbox committed (to wake a relay). It must be
	// quick and safe for concurrent use.
	OnEmit func(partition int32)
}

// Observer receives what an Applier does. Its methods are called from the
// partitions' workers, concurrently: implementations must be safe for
// concurrent use, and quick.
type Observer interface {
	// BatchApplied: records (of one partition, in log order) committed in
	// one transaction that took took; stats are what it found.
	BatchApplied(partition int32, records []*kgo.Record, took time.Duration, stats BatchStats)
	// BatchRetried: an attempt at a batch failed and is tried again; class
	// is why ("transient", "systemic", "event-caused", "poison",
	// "lookup-skipped", "recorded-concurrently", "quarantine-store": storing
	// the batch's quarantined or parked records failed, retried with backoff).
	BatchRetried(partition int32, class string)
}

// BatchStats count what one committed batch did with its records.
type BatchStats struct {
	Applied, Duplicates, Conflicts, Quarantined, Parked int
}

// WithDefaults returns c with every zero field that has a default set to it,
// as New uses it: what callers sizing pools or reporting the limits should read.
func (c Config) WithDefaults() Config {
	c.setDefaults()
	return c
}

func (c *Config) setDefaults() {
	if c.MaxBatchRecords <= 0 {
		c.MaxBatchRecords = 4000
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 4 << 20
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 10 * time.Second
	}
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 30 * time.Second
	}
	if c.SessionTimeout <= 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.RebalanceTimeout <= 0 {
		c.RebalanceTimeout = c.ShutdownGrace + 20*time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 5 * time.Second
	}
	if c.MaxEmitBytes <= 0 {
		c.MaxEmitBytes = DefaultMaxEmitBytes
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.KafkaLogger == nil {
		c.KafkaLogger = c.Logger.With("component", "kafka")
	}
}

// Validate reports what to change in an incomplete Config.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no Kafka brokers: set --brokers or HEED_BROKERS"))
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("no topic: set --topic or HEED_TOPIC"))
	}
	if c.Group == "" {
		errs = append(errs, errors.New("no consumer group: set --group or HEED_GROUP"))
	}
	if c.RebalanceTimeout > 0 && c.ShutdownGrace > 0 && c.RebalanceTimeout <= c.ShutdownGrace {
		errs = append(errs, fmt.Errorf("group rebalance timeout %v is not above the shutdown grace %v: a rebalance would give up on a member still finishing its batches; raise --group-rebalance-timeout or lower --shutdown-timeout", c.RebalanceTimeout, c.ShutdownGrace))
	}
	return errors.Join(errs...)
}

// Applier is one member of the applier consumer group. Create it with New, run
// it with Run. Its methods are safe for concurrent use.
type Applier struct {
	cfg     Config
	pool    *pgxpool.Pool
	handler Handler
	log     *slog.Logger
	// cl is the group member's client. New creates it and Run creates it
	// again when the member rejoins the group (rejoin), with opts; the
	// client's callbacks, which may run before cl is set, wait for the
	// client's ready channel first (see newClient). Only Run's goroutine
	// writes cl, while no worker runs, and under clMu, which the watchdog
	// reads it under (client).
	cl   *kgo.Client
	clMu sync.Mutex
	opts []kgo.Opt
	// dog watches for stalled partitions.
	dog   *watchdog
	stats counters
	// logs bounds how often the member's retry loops log (the partitions'
	// workers have their own).
	logs *lograte.Limiter
	// slots holds one token per batch transaction allowed at once.
	slots chan struct{}

	// hard is canceled when in-flight transactions must roll back.
	hard       context.Context
	cancelHard context.CancelFunc

	// optimistic is set when batches may skip the dedup lookup (see
	// skipLookup): the processed-event table holds no row without a key.
	// keylessChecked is set once that was looked up.
	optimistic, keylessChecked atomic.Bool
	// windowBound is set once the dedup window is checked against the
	// projection's (BindWindow).
	windowBound atomic.Bool

	mu    sync.Mutex
	parts map[int32]*partition

	// covered is the partition count the projection was built with (0:
	// not known yet); workers of partitions past it hold their records.
	// coveredAt is when it was last read, in Unix nanoseconds.
	covered   atomic.Int32
	coveredAt atomic.Int64
	// limits, when not nil, bounds what each partition applies (SetLimits).
	limitMu sync.Mutex
	limits  map[int32]int64

	// stopped ends, with a cause that Run returns, when the applier must stop.
	stopped context.Context
	stop    context.CancelCauseFunc
}

// New creates an Applier that applies cfg.Topic to pool through h. The pool's
// search_path must be the schema the migrations were applied to. It returns an
// error if cfg is incomplete or the Kafka client cannot be created.
func New(cfg Config, pool *pgxpool.Pool, h Handler) (*Applier, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	a := &Applier{cfg: cfg, pool: pool, handler: h, log: cfg.Logger, parts: make(map[int32]*partition),
		slots: make(chan struct{}, cfg.Concurrency), logs: lograte.New(retryLogEvery)}
	a.hard, a.cancelHard = context.WithCancel(context.Background())
	a.stopped, a.stop = context.WithCancelCause(context.Background())
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.BlockRebalanceOnPoll(),
		// Notice partitions added to the topic within seconds, not the
		// default 5 minutes: they are held until confirmed, and applied
		// as soon as they are (topic.ConfirmPartitions).
		kgo.MetadataMaxAge(10 * time.Second),
		// A partition resumed after a pause is fetched once the fetch in
		// flight returns, which waits up to FetchMaxWait when none of its
		// partitions has data: Kafka's Java consumer waits 500ms at most,
		// franz-go 5s by default.
		kgo.FetchMaxWait(500 * time.Millisecond),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
		kgo.HeartbeatInterval(min(3*time.Second, cfg.SessionTimeout/4)),
		kgo.OnPartitionsRevoked(a.revoked),
		kgo.OnPartitionsLost(a.lost),
		kgo.WithLogger(kslog.New(cfg.KafkaLogger)),
	}
	if cfg.InstanceID != "" {
		opts = append(opts, kgo.InstanceID(cfg.InstanceID))
	}
	if cfg.ServerSideGroup {
		opts = append(opts, kgo.ServerSideBalancer(), kgo.Balancers(kgo.StickyBalancer()))
	}
	a.opts = append(opts, cfg.KafkaOpts...)
	if err := a.newClient(); err != nil {
		return nil, err
	}
	a.dog = newWatchdog(a)
	return a, nil
}

// newClient creates the group member's Kafka client and sets a.cl. Its
// assignment callback waits until a.cl is set.
func (a *Applier) newClient() error {
	ready := make(chan struct{})
	assigned := func(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return a.assigned(ctx, offsets)
	}
	cl, err := kgo.NewClient(append(a.opts, kgo.AdjustFetchOffsetsFn(assigned))...)
	if err != nil {
		return fmt.Errorf("create Kafka consumer: %w", err)
	}
	a.clMu.Lock()
	a.cl = cl
	a.clMu.Unlock()
	close(ready)
	return nil
}

// client is the member's Kafka client, for goroutines other than Run's and
// the workers'.
func (a *Applier) client() *kgo.Client {
	a.clMu.Lock()
	defer a.clMu.Unlock()
	return a.cl
}

// Run consumes and applies until ctx ends or the client fails. When ctx ends it
// lets in-flight batches commit (bounded by ShutdownGrace), commits the marked
// offsets and leaves the group. It returns nil after a clean stop.
//
// Before consuming, and whenever partitions are assigned, it checks that the
// broker's topic is the incarnation the projection is built from (see package
// topic), recording it on first use: an error wrapping
// topic.ErrOtherIncarnation or topic.ErrAheadOfTopic stops it (or keeps it
// from starting), since applying would skip events. A grown partition count
// (topic.ErrPartitionsChanged) holds the new partitions until an operator
// confirms it, while the others apply.
func (a *Applier) Run(ctx context.Context) error {
	defer a.cancelHard()
	if err := a.bindTopic(ctx); err != nil {
		a.cl.Close()
		return err
	}
	dogCtx, stopDog := context.WithCancel(ctx)
	defer stopDog()
	go a.dog.run(dogCtx)

	outer := ctx
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer context.AfterFunc(a.stopped, func() { cancel(context.Cause(a.stopped)) })()
	a.log.Info("applier started", "topic", a.cfg.Topic, "group", a.cfg.Group, "brokers", a.cfg.Brokers)
	for {
		// The poll returns at least every pollWait, so that the loop can
		// recover stalled partitions when nothing is fetched at all.
		pctx, pcancel := context.WithTimeout(ctx, pollWait)
		fetches := a.cl.PollRecords(pctx, 2*a.cfg.MaxBatchRecords)
		pcancel()
		if fetches.IsClientClosed() || ctx.Err() != nil {
			break
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			a.logs.Log(a.log.Warn, "fetch failed; retrying", "topic", topic, "partition", p, "err", err)
		})
		deadline := time.Now().Add(feedWait)
		fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
			if len(ftp.Records) == 0 {
				return
			}
			a.mu.Lock()
			w := a.parts[ftp.Partition]
			a.mu.Unlock()
			if w != nil {
				w.feed(ftp.Records, deadline)
			}
		})
		if ps, rejoin := a.dog.takeKicks(); rejoin {
			if err := a.rejoin(); err != nil {
				cancel(err)
				break
			}
			continue
		} else if len(ps) > 0 {
			a.recoverStalls(ps)
		}
		a.cl.AllowRebalance()
	}
	a.shutdown()
	if outer.Err() == nil {
		if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
			return cause
		}
	}
	return nil
}

// pollWait bounds one poll of the Run loop.
const pollWait = time.Second

// shutdown stops every worker (finishing or rolling back in-flight batches),
// commits the marked offsets and closes the client.
func (a *Applier) shutdown() {
	a.closeClient()
	a.log.Info("applier stopped")
}

// closeClient stops every worker (finishing or rolling back in-flight
// batches), commits the marked offsets and closes the client, which leaves
// the group.
func (a *Applier) closeClient() {
	a.mu.Lock()
	all := make([]*partition, 0, len(a.parts))
	for p, w := range a.parts {
		all = append(all, w)
		delete(a.parts, p)
	}
	a.mu.Unlock()
	a.stopAll(all)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.cl.CommitMarkedOffsets(ctx); err != nil {
		a.log.Warn("commit offsets failed; the next owner resumes from the database position", "err", err)
	}
	a.cl.AllowRebalance()
	a.cl.Close()
}

// rejoin leaves the group and joins it again as a new member, with a new
// client: the watchdog's last resort for a partition that stays stalled
// after its fetch was resumed and re-seeked. Run calls it from the poll loop.
func (a *Applier) rejoin() error {
	a.log.Warn("partitions with records waiting still do not move; leaving the group and joining it again as a new member",
		"topic", a.cfg.Topic, "group", a.cfg.Group, "stalled", a.Stalled())
	a.stats.rejoins.Add(1)
	a.closeClient()
	return a.newClient()
}

// SetLimits bounds what the applier applies: partition p applies only the
// records below limits[p], and a partition missing from limits applies none;
// the rest wait, fetched, until a later SetLimits raises the bound. nil
// lifts every bound. A rebuild uses it to bring a projection to exactly the
// positions of another (heed rebuild --verify, --swap). Limits only hold
// records back: lowering one below what was applied undoes nothing.
func (a *Applier) SetLimits(limits map[int32]int64) {
	a.limitMu.Lock()
	a.limits = maps.Clone(limits) // nil for nil; an empty map stays a (blocking) map
	a.limitMu.Unlock()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, w := range a.parts {
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// limit is partition p's bound from SetLimits, and whether it has one.
func (a *Applier) limit(p int32) (int64, bool) {
	a.limitMu.Lock()
	defer a.limitMu.Unlock()
	if a.limits == nil {
		return 0, false
	}
	return a.limits[p], true
}

// Partitions lists the partitions this member owns now, in order: a relay
// running with it publishes their outbox rows (see package outbox).
func (a *Applier) Partitions() []int32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Sorted(maps.Keys(a.parts))
}

// Stats returns counters of what this Applier has done so far.
func (a *Applier) Stats() Stats { return a.stats.snapshot() }

// stopAll stops the workers ws, each finishing its in-flight batch within
// ShutdownGrace or rolling it back, and waits for them.
func (a *Applier) stopAll(ws []*partition) {
	for _, w := range ws {
		w.stop(a.cfg.ShutdownGrace)
	}
	for _, w := range ws {
		<-w.done
		w.release()
	}
}
