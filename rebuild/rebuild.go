// Package rebuild replays a topic into a fresh schema while the live
// projection keeps running, compares the two at the same per-partition
// positions, and swaps the rebuilt one in for readers and appliers at once.
// It is domain-agnostic: the caller brings the migration sets and the
// applier.Handler, as for a live applier.
//
// A rebuild never publishes: the follow-ups its handler emits go to the
// rebuilt outbox (compared like any table) and no relay runs on it (package
// outbox). The swap carries the live relay's progress over.
//
// The replay is an ordinary applier (package applier) in a consumer group of
// its own, applying to the fresh schema: the same code as the live one, so
// the rebuilt state is what the live applier would have built. Its batches
// are larger and its connections commit asynchronously
// (synchronous_commit=off): a commit lost to a crash loses its position move
// with it, so the next run re-applies it. A rebuild is thus resumable: run it
// again and it goes on from the fresh schema's applied positions.
//
// The swap (Swap) locks the live projection's applied positions, which holds
// the live appliers' next batches, brings the rebuild to exactly those
// positions, marks the live positions retired and renames the schemas, in
// one transaction: readers' next statements see the rebuilt schema under the
// live name, and a live batch that waited on the lock fails its
// compare-and-set on the retired row, re-reads its position from the schema
// live now and goes on from there (see applier.ErrRetired).
package rebuild

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/internal/lograte"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// Config configures a Rebuilder.
type Config struct {
	// DatabaseURL is the database holding both schemas.
	DatabaseURL string
	// Live is the schema readers and appliers use; Into the one to rebuild
	// (created if needed, resumed if it holds an earlier run's work).
	Live, Into string
	// Sets are the migrations of a projection (ledger.Schema for the ledger).
	Sets []schema.Migrations
	// Handler applies the events, as in the live applier.
	Handler applier.Handler
	// Applier configures the replay's applier: Brokers and Topic are
	// required; Group is the live group's name, which the rebuild's own
	// group is named after. MaxBatchRecords defaults to 20000 here. Its
	// DedupWindow is replaced by the live projection's, when it has one
	// recorded: the replay must decide duplicates as the live applier did.
	Applier applier.Config
	// Progress, if set, is called about once a second while the rebuild
	// catches up.
	Progress func(Progress)
	// Logger receives the rebuild's logs (default: discard).
	Logger *slog.Logger
}

// Progress is how far a rebuild is.
type Progress struct {
	// Applied is how many records the rebuild took past since it started
	// (applied, duplicates and quarantined alike).
	Applied int64
	// Positions are the rebuilt schema's applied positions; Targets what
	// it is catching up to.
	Positions, Targets map[int32]int64
	// Rate is records per second over the last few seconds.
	Rate float64
	// ETA is the time left at Rate (0 when unknown).
	ETA     time.Duration
	Elapsed time.Duration
}

// Left is how many records the rebuild has yet to apply to reach Targets.
func (p Progress) Left() int64 {
	var n int64
	for part, t := range p.Targets {
		if d := t - p.Positions[part]; d > 0 {
			n += d
		}
	}
	return n
}

// Rebuilder replays the topic into Config.Into. Open it, CatchUp, then
// Verify or Swap, and Close it.
type Rebuilder struct {
	cfg       Config
	log       *slog.Logger
	live      *pgxpool.Pool // search_path: Live
	into      *pgxpool.Pool // search_path: Into
	cl        *kgo.Client   // admin: end offsets, topic identity
	app       *applier.Applier
	cancelRun context.CancelFunc
	runDone   chan struct{}
	runErr    error
	started   time.Time
	startSum  int64
	// window holds recent progress samples, for the rate.
	window []sample
}

// sample is how many records a rebuild had taken past at a time.
type sample struct {
	at   time.Time
	done int64
}

// Open creates and migrates Into (or finds an earlier run's work there) and
// starts the replay, which applies nothing until CatchUp sets its targets.
func Open(ctx context.Context, cfg Config) (*Rebuilder, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := errors.Join(schema.Validate(cfg.Live), schema.Validate(cfg.Into)); err != nil {
		return nil, err
	}
	if cfg.Live == cfg.Into {
		return nil, fmt.Errorf("rebuild into %s: that is the live schema; name a fresh one (--into)", cfg.Into)
	}
	ac := cfg.Applier
	if ac.MaxBatchRecords <= 0 {
		ac.MaxBatchRecords = 20000
	}
	if ac.MaxBatchBytes <= 0 {
		ac.MaxBatchBytes = 16 << 20
	}
	ac.Group = ac.Group + "-rebuild-" + cfg.Into
	ac.Logger = cfg.Logger.With("component", "rebuild-applier")
	ac = ac.WithDefaults()

	r := &Rebuilder{cfg: cfg, log: cfg.Logger, runDone: make(chan struct{}), started: time.Now()}
	var err error
	if r.live, err = schema.Connect(ctx, cfg.DatabaseURL, cfg.Live, 4); err != nil {
		return nil, err
	}
	pc, err := schema.PoolConfig(cfg.DatabaseURL, cfg.Into, int32(ac.Concurrency)+2)
	if err != nil {
		r.Close()
		return nil, err
	}
	// A commit lost to a crash loses its position move too: the next run
	// applies the batch again. Nothing else reads Into meanwhile.
	pc.ConnConfig.RuntimeParams["synchronous_commit"] = "off"
	if r.into, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
		r.Close()
		return nil, fmt.Errorf("open database pool for %s: %w", cfg.Into, err)
	}
	if err := schema.Migrate(ctx, r.into, cfg.Into, cfg.Sets, cfg.Logger); err != nil {
		r.Close()
		return nil, err
	}
	if w, ok, err := applier.RecordedWindow(ctx, r.live); err != nil {
		r.Close()
		return nil, err
	} else if ok {
		ac.DedupWindow = w
	}
	if retired, err := isRetired(ctx, r.into, cfg.Into); err != nil {
		r.Close()
		return nil, err
	} else if retired {
		r.Close()
		return nil, fmt.Errorf("schema %s is a projection retired by an earlier swap; drop it (heed rebuild --drop-old) or rebuild into another --into", cfg.Into)
	}
	if r.cl, err = kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(ac.Brokers...)}, ac.KafkaOpts...)...); err != nil {
		r.Close()
		return nil, fmt.Errorf("create Kafka client: %w", err)
	}
	start, err := applier.AppliedPositions(ctx, r.into, ac.Topic)
	if err != nil {
		r.Close()
		return nil, err
	}
	r.startSum = total(start)
	if err := deferIndexes(ctx, r.into, cfg.Into, r.startSum == 0); err != nil {
		r.Close()
		return nil, err
	}
	if r.startSum > 0 {
		r.log.Info("resuming an earlier rebuild", "into", cfg.Into, "records_done", r.startSum)
	}
	if r.app, err = applier.New(ac, r.into, cfg.Handler); err != nil {
		r.Close()
		return nil, err
	}
	r.cfg.Applier = ac
	r.app.SetLimits(map[int32]int64{})
	runCtx, cancel := context.WithCancel(context.Background())
	r.cancelRun = cancel
	go func() {
		defer close(r.runDone)
		r.runErr = r.app.Run(runCtx)
	}()
	return r, nil
}

// Close stops the replay and closes the connections. It leaves Into as it
// is: a later Open resumes it.
func (r *Rebuilder) Close() {
	r.stop()
	if r.cl != nil {
		r.cl.Close()
	}
	if r.into != nil {
		r.into.Close()
	}
	if r.live != nil {
		r.live.Close()
	}
}

// stop ends the replay's applier and waits for it.
func (r *Rebuilder) stop() {
	if r.cancelRun != nil {
		r.cancelRun()
		<-r.runDone
	}
}

// Stats are the replay applier's counters.
func (r *Rebuilder) Stats() applier.Stats { return r.app.Stats() }

// CatchUp replays until Into has caught up: with the topic's end, or with
// toLive, with the live projection's applied positions (never past them, so
// that Verify and Swap can compare at the same positions). It returns the
// positions reached. Targets are read again after each catch-up until fewer
// than one batch of records per partition is left.
func (r *Rebuilder) CatchUp(ctx context.Context, toLive bool) (map[int32]int64, error) {
	for {
		targets, err := r.targets(ctx, toLive)
		if err != nil {
			return nil, err
		}
		pos, err := r.positions(ctx)
		if err != nil {
			return nil, err
		}
		left := Progress{Positions: pos, Targets: targets}.Left()
		began := time.Now()
		if err := r.reach(ctx, targets, 0); err != nil {
			return nil, err
		}
		// Caught up: little was left, or what was left took a moment
		// (the rebuild keeps pace with the live side).
		if left < int64(r.cfg.Applier.MaxBatchRecords) || time.Since(began) < caughtUp {
			if err := buildIndexes(ctx, r.into, r.cfg.Into, r.log); err != nil {
				return nil, err
			}
			return targets, nil
		}
	}
}

// caughtUp is how long a last catch-up round may take: the live side then
// moves by about what it applies in that time, which a swap holds it for.
const caughtUp = time.Second

// targets are the positions to catch up to: the topic's end offsets, capped
// with toLive by the live projection's applied positions.
func (r *Rebuilder) targets(ctx context.Context, toLive bool) (map[int32]int64, error) {
	ends, err := consistency.ListEndOffsets(ctx, r.cl, r.cfg.Applier.Topic)
	if err != nil {
		return nil, err
	}
	if !toLive {
		return ends, nil
	}
	live, err := applier.AppliedPositions(ctx, r.live, r.cfg.Applier.Topic)
	if err != nil {
		return nil, err
	}
	for p, end := range ends {
		ends[p] = min(end, live[p])
	}
	return ends, nil
}

// reach raises the replay's limits to targets and waits until Into's
// applied positions are there, reporting progress. timeout > 0 bounds the
// wait.
func (r *Rebuilder) reach(ctx context.Context, targets map[int32]int64, timeout time.Duration) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	r.app.SetLimits(targets)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastReport := time.Time{}
	logs := lograte.New(20 * time.Second) // the ticker retries every 250ms
	for {
		pos, err := r.positions(ctx)
		if err != nil && ctx.Err() == nil {
			logs.Log(r.log.Warn, "read the rebuild's positions failed; retrying", "err", err)
		}
		if err == nil {
			done, reached := total(pos), true
			for p, t := range targets {
				if pos[p] < t {
					reached = false
				}
			}
			now := time.Now()
			r.window = append(r.window, sample{now, done})
			for len(r.window) > 2 && now.Sub(r.window[0].at) > 5*time.Second {
				r.window = r.window[1:]
			}
			if r.cfg.Progress != nil && (reached || now.Sub(lastReport) >= time.Second) {
				lastReport = now
				pr := Progress{Applied: done - r.startSum, Positions: pos, Targets: targets, Elapsed: now.Sub(r.started)}
				if first := r.window[0]; now.Sub(first.at) > 0 {
					pr.Rate = float64(done-first.done) / now.Sub(first.at).Seconds()
				}
				if pr.Rate > 0 {
					pr.ETA = time.Duration(float64(pr.Left()) / pr.Rate * float64(time.Second))
				}
				r.cfg.Progress(pr)
			}
			if reached {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rebuild: catching up to %v: %w", targets, ctx.Err())
		case <-r.runDone:
			if r.runErr != nil {
				return fmt.Errorf("rebuild: the replay stopped: %w", r.runErr)
			}
			return errors.New("rebuild: the replay stopped")
		case <-tick.C:
		}
	}
}

// waitLivePast waits until the live projection's applied positions are at or
// past Into's on every partition, so that the two can be compared at the
// same positions: Into may be ahead where an earlier run of the rebuild went
// to the topic's end (without --verify) while a live partition lagged, and a
// replay cannot go back. The live appliers get there as they apply; timeout
// bounds the wait (they may not be running).
func (r *Rebuilder) waitLivePast(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	logs := lograte.New(5 * time.Second)
	for {
		into, err := r.positions(ctx)
		if err != nil {
			return err
		}
		live, err := applier.AppliedPositions(ctx, r.live, r.cfg.Applier.Topic)
		if err != nil {
			return err
		}
		var ahead []string
		for _, p := range slices.Sorted(maps.Keys(into)) {
			if into[p] > live[p] {
				ahead = append(ahead, fmt.Sprintf("partition %d: rebuilt %d, live %d", p, into[p], live[p]))
			}
		}
		if len(ahead) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the rebuild is past the live projection (%s), and the live appliers did not get there within %v: "+
				"they compare only at the same positions; run heed apply (or wait for it) and verify again, or rebuild into a fresh --into",
				strings.Join(ahead, "; "), timeout)
		}
		logs.Log(r.log.Info, "the rebuild is past the live projection (an earlier run went to the topic's end): waiting for the live appliers", "ahead", ahead)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// exactlyAt checks that Into's positions are at (not past) the live ones it
// is compared with: a comparison at other positions would report a false
// difference.
func (r *Rebuilder) exactlyAt(ctx context.Context, at map[int32]int64) error {
	into, err := r.positions(ctx)
	if err != nil {
		return err
	}
	for p, pos := range into {
		if pos > at[p] {
			return fmt.Errorf("the rebuild passed the live projection on partition %d (%d > %d) before the comparison: compare again", p, pos, at[p])
		}
	}
	return nil
}

// positions are Into's applied positions (a partition without a row is at 0).
func (r *Rebuilder) positions(ctx context.Context) (map[int32]int64, error) {
	return applier.AppliedPositions(ctx, r.into, r.cfg.Applier.Topic)
}

// lockLivePositions reads the live projection's applied positions in tx, a
// transaction of the live pool (its search_path the live schema), and locks
// them FOR UPDATE: the live appliers' next batches wait until tx ends.
func lockLivePositions(ctx context.Context, tx pgx.Tx, topicName string) (map[int32]int64, error) {
	return applier.AppliedPositions(ctx, forUpdate{tx}, topicName)
}

// forUpdate adds FOR UPDATE to the queries it runs.
type forUpdate struct{ tx pgx.Tx }

func (f forUpdate) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return f.tx.Query(ctx, sql+" FOR UPDATE", args...)
}

// total is the sum of positions: how many records they are past.
func total(positions map[int32]int64) int64 {
	var n int64
	for _, p := range positions {
		n += p
	}
	return n
}

// schemaExists reports whether the database has schemaName.
func schemaExists(ctx context.Context, q topic.Querier, schemaName string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, schemaName).Scan(&ok)
	return ok, err
}

// isRetired reports whether schemaName holds a projection a swap retired.
func isRetired(ctx context.Context, q topic.Querier, schemaName string) (bool, error) {
	var retired bool
	err := q.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+pgx.Identifier{schemaName, "applied_positions"}.Sanitize()+` WHERE retired_at IS NOT NULL)`).Scan(&retired)
	if err != nil {
		return false, fmt.Errorf("read whether %s is retired: %w", schemaName, err)
	}
	return retired, nil
}

// ErrDiffers is wrapped by Verify's and Swap's error when the rebuilt schema
// differs from the live one at the same positions.
var ErrDiffers = errors.New("the rebuilt projection differs from the live one at the same positions")

// Verify brings Into to exactly the live projection's applied positions and
// compares the two there, table by table. To fix the live side at those
// positions it holds the live appliers' next batches (a row lock on their
// positions) until the rebuild has caught up, which CatchUp(ctx, true) made
// short; the comparison itself runs on a snapshot taken then, while the live
// appliers go on. timeout bounds the hold. It returns the report, and an
// error wrapping ErrDiffers when they differ.
func (r *Rebuilder) Verify(ctx context.Context, timeout time.Duration) (*Report, error) {
	exists, err := schemaExists(ctx, r.live, r.cfg.Live)
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("verify: there is no live schema %s to compare with", r.cfg.Live)
	}
	if err := r.waitLivePast(ctx, timeout); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	hold, err := r.live.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer hold.Rollback(context.Background()) //nolint:errcheck // releases the hold; nothing was written
	if _, err := hold.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(timeout.Milliseconds(), 1))); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	at, err := lockLivePositions(ctx, hold, r.cfg.Applier.Topic)
	if err != nil {
		return nil, fmt.Errorf("verify: hold the live appliers: %w", err)
	}
	if err := r.reach(ctx, at, timeout); err != nil {
		return nil, err
	}
	if err := r.exactlyAt(ctx, at); err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	snap, err := r.live.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer snap.Rollback(context.Background())             //nolint:errcheck // read only
	if _, err := snap.Exec(ctx, "SELECT 1"); err != nil { // takes the snapshot
		return nil, fmt.Errorf("verify: %w", err)
	}
	_ = hold.Rollback(ctx) // the live appliers go on; the snapshot has both at the same positions
	rep, err := compare(ctx, snap, r.cfg.Live, r.cfg.Into)
	if err != nil {
		return nil, err
	}
	rep.Positions = at
	if !rep.Equal() {
		return rep, fmt.Errorf("%w: %s", ErrDiffers, rep.Summary())
	}
	return rep, nil
}

// SwapOptions tune Swap.
type SwapOptions struct {
	// Old is the name the live schema gets; it must not exist.
	Old string
	// Verify compares the two, under the lock, before swapping, and
	// swaps nothing when they differ.
	Verify bool
	// Timeout bounds how long the live appliers are held.
	Timeout time.Duration
}

// SwapResult is what Swap did.
type SwapResult struct {
	// Positions are where the rebuilt projection took over.
	Positions map[int32]int64
	// Report is the comparison, with SwapOptions.Verify.
	Report *Report
	// OtherIncarnation is set when the live projection was built from
	// another incarnation of the topic, AheadOfTopic when it holds records
	// the topic no longer has (a broker restored from an older backup): the
	// rebuilt one took over at the topic's end, without a comparison.
	OtherIncarnation, AheadOfTopic bool
}

// CanSwap reports what would keep Swap from renaming the live schema to old,
// so that a caller can refuse before replaying.
func (r *Rebuilder) CanSwap(ctx context.Context, old string) error {
	if err := schema.Validate(old); err != nil {
		return err
	}
	if old == r.cfg.Live || old == r.cfg.Into {
		return fmt.Errorf("swap: the old schema's name %s must differ from the live and the rebuilt one", old)
	}
	if exists, err := schemaExists(ctx, r.live, old); err != nil {
		return err
	} else if exists {
		return fmt.Errorf("swap: schema %s exists already (an earlier swap's old projection?): drop it first (heed rebuild --drop-old) or name another with --old-schema", old)
	}
	return nil
}

// Swap makes Into the live projection, atomically: it holds the live
// appliers (locks their positions), brings the rebuild to exactly their
// positions, stops the replay, optionally compares, marks the live positions
// retired and renames Live to opts.Old and Into to Live, in one transaction.
// Running readers and appliers follow it without a restart. With no live
// schema it renames Into to Live once the rebuild has reached the topic's
// end; with a live projection of another topic incarnation, likewise (that
// projection is retired, not compared).
func (r *Rebuilder) Swap(ctx context.Context, opts SwapOptions) (*SwapResult, error) {
	if err := r.CanSwap(ctx, opts.Old); err != nil {
		return nil, err
	}
	liveExists, err := schemaExists(ctx, r.live, r.cfg.Live)
	if err != nil {
		return nil, err
	}
	res := &SwapResult{}
	if liveExists {
		rec, recorded, err := topic.Recorded(ctx, r.live, r.cfg.Applier.Topic)
		if err != nil {
			return nil, err
		}
		if recorded {
			cur, err := topic.Describe(ctx, r.cl, r.cfg.Applier.Topic)
			if err != nil && !errors.Is(err, topic.ErrMissing) {
				return nil, err
			}
			res.OtherIncarnation = errors.Is(err, topic.ErrMissing) || cur.ID != rec.ID
		}
	}
	if opts.Verify && liveExists && !res.OtherIncarnation {
		if err := r.waitLivePast(ctx, opts.Timeout); err != nil {
			return nil, fmt.Errorf("swap: %w", err)
		}
	}
	tx, err := r.live.Begin(ctx)
	if err != nil {
		return nil, fmt.Errorf("swap: %w", err)
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after COMMIT a no-op
	if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", max(opts.Timeout.Milliseconds(), 1))); err != nil {
		return nil, fmt.Errorf("swap: %w", err)
	}
	var at map[int32]int64
	if liveExists && !res.OtherIncarnation {
		if at, err = lockLivePositions(ctx, tx, r.cfg.Applier.Topic); err != nil {
			return nil, fmt.Errorf("swap: hold the live appliers: %w", err)
		}
		ends, err := r.targets(ctx, false)
		if err != nil {
			return nil, err
		}
		for p, pos := range at {
			if pos > ends[p] {
				// The broker lost records the live projection holds (a
				// restored broker): no rebuild can reach its positions.
				res.AheadOfTopic, at = true, ends
				break
			}
		}
	} else {
		if liveExists {
			// Lock the other incarnation's positions too: its appliers
			// have stopped, but a late one must not commit into it.
			if _, err := lockLivePositions(ctx, tx, r.cfg.Applier.Topic); err != nil {
				return nil, fmt.Errorf("swap: %w", err)
			}
		}
		if at, err = r.targets(ctx, false); err != nil {
			return nil, err
		}
	}
	res.Positions = at
	if err := r.reach(ctx, at, opts.Timeout); err != nil {
		return nil, err
	}
	r.stop() // nothing more goes into Into under its old name
	if r.runErr != nil {
		return nil, fmt.Errorf("swap: the replay stopped: %w", r.runErr)
	}
	if opts.Verify && liveExists && !res.OtherIncarnation && !res.AheadOfTopic {
		if err := r.exactlyAt(ctx, at); err != nil {
			return nil, fmt.Errorf("swap: nothing swapped: %w", err)
		}
		rep, err := compare(ctx, tx, r.cfg.Live, r.cfg.Into)
		if err != nil {
			return nil, err
		}
		rep.Positions = at
		res.Report = rep
		if !rep.Equal() {
			return res, fmt.Errorf("swap: nothing swapped: %w: %s", ErrDiffers, rep.Summary())
		}
	}
	if liveExists && !res.OtherIncarnation {
		if err := carryRelay(ctx, tx, r.cfg.Live, r.cfg.Into); err != nil {
			return nil, err
		}
	}
	if liveExists {
		if _, err := tx.Exec(ctx, `UPDATE `+pgx.Identifier{r.cfg.Live, "applied_positions"}.Sanitize()+` SET retired_at = now()`); err != nil {
			return nil, fmt.Errorf("swap: retire the live positions: %w", err)
		}
		if _, err := tx.Exec(ctx, `ALTER SCHEMA `+pgx.Identifier{r.cfg.Live}.Sanitize()+` RENAME TO `+pgx.Identifier{opts.Old}.Sanitize()); err != nil {
			return nil, fmt.Errorf("swap: rename %s to %s: %w", r.cfg.Live, opts.Old, err)
		}
	}
	if _, err := tx.Exec(ctx, `ALTER SCHEMA `+pgx.Identifier{r.cfg.Into}.Sanitize()+` RENAME TO `+pgx.Identifier{r.cfg.Live}.Sanitize()); err != nil {
		return nil, fmt.Errorf("swap: rename %s to %s: %w", r.cfg.Into, r.cfg.Live, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("swap: commit: %w", err)
	}
	r.log.Info("swapped", "live", r.cfg.Live, "old", opts.Old, "positions", at)
	return res, nil
}

// relayTables are the outbox relay's progress, which is not part of the
// projection (a rebuild never publishes): a swap carries the live one over.
var relayTables = []string{"heed_outbox_relay", "heed_outbox_failed"}

// carryRelay copies the live relay's progress into the rebuilt projection,
// in the swap's transaction, so that its relay sends only rows the live one
// had not sent. A row the live relay produces after the copy, before the
// rename, is sent again unless applied by then: a duplicate, which the
// applier drops by its event ID.
func carryRelay(ctx context.Context, tx pgx.Tx, live, into string) error {
	for _, t := range relayTables {
		var has bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, pgx.Identifier{live, t}.Sanitize()).Scan(&has); err != nil {
			return fmt.Errorf("swap: find %s.%s: %w", live, t, err)
		}
		if !has {
			continue // a live projection from before the outbox
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+pgx.Identifier{into, t}.Sanitize()+` SELECT * FROM `+pgx.Identifier{live, t}.Sanitize()+` ON CONFLICT DO NOTHING`); err != nil {
			return fmt.Errorf("swap: carry the relay's progress (%s) over: %w", t, err)
		}
	}
	return nil
}

// DropOld drops schemaName, which must hold a projection a swap retired: a
// live or rebuilding one is refused.
func DropOld(ctx context.Context, pool *pgxpool.Pool, schemaName string) error {
	if err := schema.Validate(schemaName); err != nil {
		return err
	}
	exists, err := schemaExists(ctx, pool, schemaName)
	if err != nil {
		return err
	}
	if !exists {
		return fmt.Errorf("drop old: there is no schema %s (nothing to drop)", schemaName)
	}
	retired, err := isRetired(ctx, pool, schemaName)
	if err != nil {
		return err
	}
	if !retired {
		return fmt.Errorf("drop old: refusing to drop %s: it is not a projection retired by heed rebuild --swap", schemaName)
	}
	if _, err := pool.Exec(ctx, `DROP SCHEMA `+pgx.Identifier{schemaName}.Sanitize()+` CASCADE`); err != nil {
		return fmt.Errorf("drop old: %w", err)
	}
	return nil
}
