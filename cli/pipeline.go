package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	commandpkg "github.com/heed-dev/heed/command"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/gen/heed/command/v1/commandv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/observe"
	"github.com/heed-dev/heed/outbox"
	"github.com/heed-dev/heed/retention"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// openDB connects to the database; with migrate it applies pending migrations,
// otherwise it fails, saying to run `heed migrate`, when some are pending.
func openDB(ctx context.Context, db dbFlags, maxConns int32, migrate bool, logger *slog.Logger) (*pgxpool.Pool, error) {
	pool, err := schema.Connect(ctx, db.url, db.schema, maxConns)
	if err != nil {
		return nil, err
	}
	if migrate {
		err = schema.Migrate(ctx, pool, db.schema, db.dom.Sets(), logger)
	} else {
		err = schema.CheckMigrated(ctx, pool, db.schema, db.dom.Sets())
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// The server's guard decides which commands the publisher writes.
var _ ingest.Gate = (*topic.Guard)(nil)

// ingestConfig is the publisher's configuration from the flags.
func ingestConfig(logger *slog.Logger, kafka kafkaFlags, sf serveFlags) ingest.Config {
	return ingest.Config{
		Brokers:        kafka.brokerList(),
		Topic:          kafka.topic,
		Linger:         producerLinger(sf.produceLinger),
		Compression:    sf.compression,
		ProduceTimeout: sf.produceTimeout,
		Logger:         logger,
		IDs:            kafka.dom.IDs(),
	}
}

// applierConfig is the applier's configuration from the flags.
func applierConfig(logger *slog.Logger, kafka kafkaFlags, af applyFlags) applier.Config {
	return applier.Config{
		Brokers:          kafka.brokerList(),
		Topic:            kafka.topic,
		Group:            af.group,
		MaxBatchRecords:  af.batchRecords,
		MaxBatchBytes:    af.batchBytes,
		Linger:           af.batchLinger,
		Concurrency:      af.concurrency,
		ShutdownGrace:    af.shutdownTimeout,
		SessionTimeout:   af.sessionTimeout,
		RebalanceTimeout: af.rebalanceTimeout,
		InstanceID:       af.instanceID,
		ServerSideGroup:  af.groupProtocol == "consumer",
		DedupWindow:      af.retention,
		StallTimeout:     af.stallTimeout,
		Logger:           logger,
		IDs:              kafka.dom.IDs(),
	}
}

// serveOn runs the command and query server on ln until ctx ends. It creates
// the topic if it does not exist, then refuses to start unless the topic is the
// incarnation the projection in pool is built from (recording it on first
// use), and keeps checking while it runs: commands are refused meanwhile.
// ready, if not nil, is called once the server is about to serve.
func serveOn(ctx context.Context, logger *slog.Logger, kafka kafkaFlags, sf serveFlags, db dbFlags, pool *pgxpool.Pool, ln net.Listener, x *ops, sec serverSec, ready func()) error {
	adminCl, err := kafka.newClient()
	if err != nil {
		return err
	}
	defer adminCl.Close()
	if _, recorded, err := topic.Recorded(ctx, pool, kafka.topic); err != nil {
		return err
	} else if !recorded { // a new projection: create the topic if it does not exist
		if _, err := ingest.EnsureTopic(ctx, adminCl, kafka.topic, int32(sf.partitions), -1); err != nil {
			return err
		}
	}
	guard := topic.NewGuard(pool, adminCl, kafka.topic, 0, logger)
	if err := guard.Check(ctx); err != nil {
		return topicError(db, err)
	}
	warnDurability(ctx, adminCl, kafka.topic, logger)
	icfg := ingestConfig(logger, kafka, sf)
	icfg.Gate = guard
	if icfg.KafkaOpts, err = x.kafkaOpts(kafka, "producer"); err != nil {
		return err
	}
	icfg.OnProduce = x.metrics.OnProduce
	pub, err := ingest.NewPublisher(icfg)
	if err != nil {
		return err
	}
	defer pub.Close()
	go guard.Run(ctx)
	x.commonChecks(db, pool, adminCl)
	x.health.Add(observe.Check{Name: "topic", Fn: func(context.Context) error { return guard.Admit() }})
	x.metrics.WatchPool(pool)
	x.exportPositions(kafka, pool, adminCl)
	if ready != nil {
		ready()
	}
	readerOpts, err := kafka.sec.Opts()
	if err != nil {
		return err
	}
	env := &heed.Env{
		Publisher:   pub,
		Pool:        pool,
		Topic:       kafka.topic,
		ReadWaitMax: sf.readWaitMax,
		Ends:        consistency.NewEnds(pub, time.Second),
		ReadRecord:  recordReader(kafka, readerOpts),
	}
	hopts := append(x.tracing.HandlerOptions(), connect.WithInterceptors(x.metrics.Interceptor()))
	env.Options = ingest.HandlerOptionsLimit(sf.maxRequestBytes, hopts...)
	env.Results = commandResults(kafka.dom, env)
	services, err := domainServices(kafka.dom, env)
	if err != nil {
		return err
	}
	names := make([]string, len(services))
	for i, s := range services {
		names[i] = s.Name
	}
	x.metrics.Services(names...) // the procedure label's values: any other path is "unknown"
	opts := []ingest.ServerOption{ingest.WithMaxRequestBytes(sf.maxRequestBytes), ingest.WithShutdownTimeout(sf.shutdownTimeout),
		ingest.WithHealthChecker(x.health.Checker(names...))}
	if sec.guard != nil {
		opts = append(opts, ingest.WithGuard(sec.guard))
	}
	if sec.tls != nil {
		opts = append(opts, ingest.WithTLS(sec.tls))
	}
	if origins := sf.corsList(); len(origins) > 0 {
		opts = append(opts, ingest.WithCORS(origins))
	}
	srv := ingest.NewServer(logger, opts...)
	for _, s := range services {
		srv.Mount(s.Name, s.Path, s.Handler)
	}
	return srv.Serve(ctx, ln)
}

// domainServices are the domain's services for env, and heed's own every
// domain gets.
func domainServices(d *heed.Domain, env *heed.Env) ([]heed.Service, error) {
	services, err := d.Services(env)
	if err != nil {
		return nil, err
	}
	path, h := commandv1connect.NewCommandServiceHandler(commandpkg.NewService(env.Results), env.Options...)
	return append(services, heed.Service{Name: commandv1connect.CommandServiceName, Path: path, Handler: h}), nil
}

// commandResults reads the domain's command outcomes for env.
func commandResults(d *heed.Domain, env *heed.Env) *commandpkg.Results {
	opts := []commandpkg.Option{commandpkg.WithTopicEnds(env.Ends), commandpkg.WithEventID(d.IDs().EventID)}
	if env.ReadRecord != nil {
		opts = append(opts, commandpkg.WithRecordReader(env.ReadRecord))
	}
	if m := d.ResultMessage(); m != nil {
		opts = append(opts, commandpkg.WithResultType(m))
	}
	return commandpkg.NewResults(env.Pool, env.Topic, env.ReadWaitMax, opts...)
}

// serverSec is the server's TLS configuration and guard (nil: none).
type serverSec struct {
	tls   *tls.Config
	guard func(http.Handler) http.Handler
}

// topicError says which projection a topic identity error is about, and for
// a topic that is not the projection's, how to start over.
func topicError(db dbFlags, err error) error {
	switch {
	case errors.Is(err, topic.ErrPartitionsChanged):
		return fmt.Errorf("refusing to start on schema %s: %w", db.schema, err)
	case errors.Is(err, applier.ErrWindowChanged):
		return fmt.Errorf("refusing to start on schema %s: %w; --retention is also the dedup window, fixed for a projection's life: start with the projection's --retention (HEED_RETENTION), or build a new projection with the new one (heed apply --schema NEW --group NEW --retention ..., which replays the topic)", db.schema, err)
	case errors.Is(err, topic.ErrOtherIncarnation), errors.Is(err, topic.ErrAheadOfTopic):
		return fmt.Errorf("refusing to start on schema %s: %w (to start over instead, if the old topic is gone for good: drop schema %s, the projection of that topic)", db.schema, err, db.schema)
	}
	return err
}

// applyFrom runs the domain's applier until ctx ends and, with rf.on, the
// relay of the outbox rows of the partitions it owns.
func applyFrom(ctx context.Context, logger *slog.Logger, kafka kafkaFlags, af applyFlags, rf relayFlags, db dbFlags, pool *pgxpool.Pool, x *ops, obs obsFlags) error {
	cfg := applierConfig(logger, kafka, af)
	var err error
	if cfg.KafkaOpts, err = x.kafkaOpts(kafka, "applier"); err != nil {
		return err
	}
	cfg.Observer = observe.Observers(x.metrics, x.tracing)
	var relay *outbox.Relay
	if rf.on {
		cfg.OnEmit = func(p int32) { relay.Wake(p) }
	}
	a, err := applier.New(cfg, pool, db.dom.Handler())
	if err != nil {
		return err
	}
	adminCl, err := kafka.newClient()
	if err != nil {
		return err
	}
	defer adminCl.Close()
	if rf.on {
		pub, err := relayPublisher(ctx, logger, kafka, pool, adminCl, x)
		if err != nil {
			return err
		}
		defer pub.Close()
		relay = outbox.New(pool, pub, outbox.Config{Topic: kafka.topic, Partitions: a.Partitions, Poll: rf.poll, Logger: logger.With("component", "relay")})
		x.metrics.WatchRelay(relay)
		rctx, stopRelay := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { _ = relay.Run(rctx); close(done) }() // Run returns nil when rctx ends
		defer func() { stopRelay(); <-done }()
	}
	x.commonChecks(db, pool, adminCl)
	x.applyChecks(kafka, pool, adminCl, obs.readyMaxLag)
	x.metrics.WatchStalls(a.Stalled)
	x.metrics.WatchAssignment(a.Partitions)
	if obs.readyMaxStall > 0 {
		x.health.Add(observe.StallCheck(a.Stalled, obs.readyMaxStall))
	}
	warnDurability(ctx, adminCl, kafka.topic, logger)
	if af.retention > 0 {
		go retention.Run(ctx, pool, retention.Config{Topic: kafka.topic, Retention: af.retention, Logger: logger.With("component", "retention")}, af.retentionInterval)
	}
	if err := a.Run(ctx); err != nil {
		return fmt.Errorf("applier: %w", topicError(db, err))
	}
	return nil
}

// relayPublisher is the producer a relay publishes follow-ups through:
// idempotent, acks=all, keys hashed over the partition count the projection
// was built with (a topic.Guard, which it keeps checking until ctx ends).
func relayPublisher(ctx context.Context, logger *slog.Logger, kafka kafkaFlags, pool *pgxpool.Pool, adminCl *kgo.Client, x *ops) (*ingest.Publisher, error) {
	guard := topic.NewGuard(pool, adminCl, kafka.topic, 0, logger)
	if err := guard.Check(ctx); err != nil {
		// The relay retries meanwhile; the guard's Run logs the outcome.
		logger.Warn("the relay cannot check the topic's identity yet; it publishes once it can", "topic", kafka.topic, "err", err)
	}
	go guard.Run(ctx)
	icfg := ingest.Config{Brokers: kafka.brokerList(), Topic: kafka.topic, Logger: logger, IDs: kafka.dom.IDs(), Gate: guard}
	var err error
	if icfg.KafkaOpts, err = x.kafkaOpts(kafka, "relay"); err != nil {
		return nil, err
	}
	return ingest.NewPublisher(icfg)
}

// recordReader reads one record of kafka's topic with a client of its own:
// GetCommandResult reads one only to tell an expired command (rare).
func recordReader(kafka kafkaFlags, opts []kgo.Opt) func(ctx context.Context, partition int32, offset int64) ([]byte, []byte, error) {
	return func(ctx context.Context, partition int32, offset int64) ([]byte, []byte, error) {
		cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(kafka.brokerList()...),
			kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{kafka.topic: {partition: kgo.NewOffset().At(offset)}})}, opts...)...)
		if err != nil {
			return nil, nil, fmt.Errorf("create Kafka consumer: %w", err)
		}
		defer cl.Close()
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		for {
			fs := cl.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				return nil, nil, fmt.Errorf("read the record at %d/%d: %w", partition, offset, err)
			}
			for it := fs.RecordIter(); !it.Done(); {
				if r := it.Next(); r.Offset == offset {
					return r.Key, r.Value, nil
				}
			}
		}
	}
}
