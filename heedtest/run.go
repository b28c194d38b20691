package heedtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/rebuild"
	"github.com/heed-dev/heed/schema"
)

// replayer runs streams of one domain live and rebuilt, on one database
// and one broker: each run on a topic, a consumer group and two schemas of
// its own.
type replayer struct {
	d       *heed.Domain
	handler applier.Handler
	opts    options
	dbURL   string
	brokers []string
	admin   *pgxpool.Pool // the database's default schema: drops the runs' schemas
	cl      *kgo.Client   // writes the streams, partitioning keys as heed's publisher does
	logger  *slog.Logger
	warning lastWarning // the logger's last warning
	runs    int
}

// indexed is a command with its index in the stream as generated, which
// the run's schedule of restarts and pauses refers to: a shrunk stream
// keeps the restarts and pauses of the commands it keeps.
type indexed struct {
	i int
	c Command
}

// schedule is what a stream's live run and rebuild do besides writing the
// commands, drawn from the stream's seed.
type schedule struct {
	batch        int                   // MaxBatchRecords of the first live applier
	restarts     map[int]int           // before command i: restart with this MaxBatchRecords
	pauses       map[int]time.Duration // before command i: apply what was written, then sleep
	rebuildBatch int
}

func newSchedule(seed uint64, n int, o options) schedule {
	rng := rand.New(rand.NewPCG(seed, 1))
	s := schedule{batch: 1 + rng.IntN(40), restarts: map[int]int{}, pauses: map[int]time.Duration{}, rebuildBatch: 1 + rng.IntN(500)}
	if n < 2 {
		return s
	}
	if o.restarts > 0 {
		for range 1 + rng.IntN(o.restarts) {
			s.restarts[1+rng.IntN(n-1)] = 1 + rng.IntN(40)
		}
	}
	if o.maxPause > 0 {
		for range o.pauses {
			s.pauses[1+rng.IntN(n-1)] = o.maxPause/2 + time.Duration(rng.Int64N(int64(o.maxPause/2)+1))
		}
	}
	return s
}

// differs writes stream to a fresh topic, applies it live through the
// schedule's restarts and pauses, rebuilds it into a fresh schema and
// compares the two: "" when they are equal, else the difference. An error
// is a run that could not be completed.
func (r *replayer) differs(ctx context.Context, stream []indexed, s schedule) (string, error) {
	r.runs++
	n := r.runs
	topicName := fmt.Sprintf("heedtest-%s-%d", r.d.Name(), n)
	group := fmt.Sprintf("heedtest-%d", n)
	live, rebuilt := fmt.Sprintf("heedtest_live_%d", n), fmt.Sprintf("heedtest_rebuilt_%d", n)
	defer r.drop(live, rebuilt)

	if _, err := ingest.EnsureTopic(ctx, r.cl, topicName, r.opts.partitions, 1); err != nil {
		return "", err
	}
	pool, err := schema.Connect(ctx, r.dbURL, live, 8)
	if err != nil {
		return "", err
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool, live, r.d.Sets(), r.logger); err != nil {
		return "", err
	}

	l := &liveRun{r: r, pool: pool, topic: topicName, group: group, ends: map[int32]int64{}}
	if err := l.start(ctx, s.batch); err != nil {
		return "", err
	}
	defer l.stop()
	var pending []*kgo.Record
	for _, ic := range stream {
		if batch, ok := s.restarts[ic.i]; ok {
			if err := l.stop(); err != nil {
				return "", err
			}
			if err := l.write(ctx, pending); err != nil {
				return "", err
			}
			pending = nil
			if err := l.start(ctx, batch); err != nil {
				return "", err
			}
		}
		if d, ok := s.pauses[ic.i]; ok {
			if err := l.write(ctx, pending); err != nil {
				return "", err
			}
			pending = nil
			if err := l.waitApplied(ctx); err != nil {
				return "", err
			}
			select {
			case <-ctx.Done():
				return "", ctx.Err()
			case <-time.After(d):
			}
		}
		rec, err := r.record(topicName, ic.c)
		if err != nil {
			return "", fmt.Errorf("command %d (%v): %w", ic.i, ic.c, err)
		}
		pending = append(pending, rec)
	}
	if err := l.write(ctx, pending); err != nil {
		return "", err
	}
	if err := l.waitApplied(ctx); err != nil {
		return "", err
	}
	if err := l.stop(); err != nil {
		return "", err
	}

	rb, err := rebuild.Open(ctx, rebuild.Config{
		DatabaseURL: r.dbURL, Live: live, Into: rebuilt,
		Sets: r.d.Sets(), Handler: r.handler,
		Applier: applier.Config{Brokers: r.brokers, Topic: topicName, Group: group, MaxBatchRecords: s.rebuildBatch, DedupWindow: r.opts.window},
		Logger:  r.logger,
	})
	if err != nil {
		return "", fmt.Errorf("rebuild: %w", err)
	}
	defer rb.Close()
	if _, err := rb.CatchUp(ctx, true); err != nil {
		return "", fmt.Errorf("rebuild: %w", err)
	}
	rep, err := rb.Verify(ctx, 30*time.Second)
	switch {
	case errors.Is(err, rebuild.ErrDiffers) && rep != nil:
		return rep.Summary(), nil
	case err != nil:
		return "", fmt.Errorf("rebuild: %w", err)
	}
	return "", nil
}

// record is the Kafka record of c on topic, as heed's publisher writes it,
// with c's timestamp.
func (r *replayer) record(topic string, c Command) (*kgo.Record, error) {
	var rec *kgo.Record
	switch {
	case c.Raw != nil:
		rec = &kgo.Record{Key: []byte(c.Key), Value: c.Raw}
	case c.Event == nil:
		return nil, errors.New("neither Event nor Raw is set")
	default:
		env, err := ingest.NewEnvelopeIn(r.d.IDs(), c.Key, c.RequestID, c.Event)
		if err != nil {
			return nil, err
		}
		if rec, err = ingest.NewRecord(env); err != nil {
			return nil, err
		}
	}
	rec.Topic = topic
	rec.Timestamp = r.opts.start.Add(c.At)
	return rec, nil
}

// drop drops a run's schemas; a failure is logged (the database is dropped
// at the test's end anyway).
func (r *replayer) drop(schemas ...string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range schemas {
		if _, err := r.admin.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{s}.Sanitize()+` CASCADE`); err != nil {
			r.logger.Warn("heedtest: drop a run's schema", "schema", s, "err", err)
		}
	}
}

// liveRun is a stream's live side: its applier, restarted at will, and how
// far the topic was written.
type liveRun struct {
	r            *replayer
	pool         *pgxpool.Pool
	topic, group string
	ends         map[int32]int64 // partition → offset after the last record written
	cancel       context.CancelFunc
	done         chan error
}

func (l *liveRun) start(ctx context.Context, batch int) error {
	a, err := applier.New(applier.Config{
		Brokers: l.r.brokers, Topic: l.topic, Group: l.group,
		MaxBatchRecords: batch, DedupWindow: l.r.opts.window, Logger: l.r.logger,
	}, l.pool, l.r.handler)
	if err != nil {
		return fmt.Errorf("live applier: %w", err)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	l.cancel, l.done = cancel, make(chan error, 1)
	go func() { l.done <- a.Run(runCtx) }()
	return nil
}

// stop stops the live applier, if one runs, and returns its error.
func (l *liveRun) stop() error {
	if l.cancel == nil {
		return nil
	}
	l.cancel()
	err := <-l.done
	l.cancel, l.done = nil, nil
	if err != nil {
		return fmt.Errorf("live applier: %w", err)
	}
	return nil
}

// write writes recs, in order, and waits for the broker's acks.
func (l *liveRun) write(ctx context.Context, recs []*kgo.Record) error {
	if len(recs) == 0 {
		return nil
	}
	if err := l.r.cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		return fmt.Errorf("write the stream: %w", err)
	}
	for _, rec := range recs {
		l.ends[rec.Partition] = max(l.ends[rec.Partition], rec.Offset+1)
	}
	return nil
}

// waitApplied waits until the live applier applied every record written.
func (l *liveRun) waitApplied(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.r.opts.applyTimeout)
	defer cancel()
	for {
		pos, err := applier.AppliedPositions(ctx, l.pool, l.topic)
		if err == nil {
			var behind []string
			for _, p := range slices.Sorted(maps.Keys(l.ends)) {
				if pos[p] < l.ends[p] {
					behind = append(behind, fmt.Sprintf("partition %d at %d of %d", p, pos[p], l.ends[p]))
				}
			}
			if len(behind) == 0 {
				return nil
			}
			err = fmt.Errorf("%v", behind)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the live applier did not apply the stream within %v: %v (a handler error that is not heed.Quarantine's is retried forever); its last warning: %s", l.r.opts.applyTimeout, err, l.r.warning.String())
		case err := <-l.done:
			l.cancel()
			l.cancel, l.done = nil, nil
			return fmt.Errorf("the live applier stopped: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
