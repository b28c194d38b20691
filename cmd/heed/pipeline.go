package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/schema"
)

// migrations are every component's migration sets, in the order they apply.
var migrations = []schema.Migrations{
	{Name: "dedup", FS: dedup.Migrations},
	{Name: "applier", FS: applier.Migrations},
	{Name: "ledger", FS: ledger.Migrations},
}

// openDB connects to the database; with migrate it applies pending migrations,
// otherwise it fails, saying to run `heed migrate`, when some are pending.
func openDB(ctx context.Context, db dbFlags, maxConns int32, migrate bool, logger *slog.Logger) (*pgxpool.Pool, error) {
	pool, err := schema.Connect(ctx, db.url, db.schema, maxConns)
	if err != nil {
		return nil, err
	}
	if migrate {
		err = schema.Migrate(ctx, pool, db.schema, migrations, logger)
	} else {
		err = schema.CheckMigrated(ctx, pool, db.schema, migrations)
	}
	if err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// ingestConfig is the publisher's configuration from the flags.
func ingestConfig(logger *slog.Logger, kafka kafkaFlags, sf serveFlags) ingest.Config {
	return ingest.Config{
		Brokers:        kafka.brokerList(),
		Topic:          kafka.topic,
		Linger:         producerLinger(sf.produceLinger),
		Compression:    sf.compression,
		ProduceTimeout: sf.produceTimeout,
		Logger:         logger,
	}
}

// applierConfig is the applier's configuration from the flags.
func applierConfig(logger *slog.Logger, kafka kafkaFlags, af applyFlags) applier.Config {
	return applier.Config{
		Brokers:         kafka.brokerList(),
		Topic:           kafka.topic,
		Group:           af.group,
		MaxBatchRecords: af.batchRecords,
		MaxBatchBytes:   af.batchBytes,
		Linger:          af.batchLinger,
		Concurrency:     af.concurrency,
		Logger:          logger,
	}
}

// serveOn runs the command and query server on ln until ctx ends.
func serveOn(ctx context.Context, logger *slog.Logger, kafka kafkaFlags, sf serveFlags, pool *pgxpool.Pool, ln net.Listener) error {
	pub, err := ingest.NewPublisher(ingestConfig(logger, kafka, sf))
	if err != nil {
		return err
	}
	defer pub.Close()
	n, err := ingest.EnsureTopic(ctx, pub.Client(), kafka.topic, int32(sf.partitions), -1)
	if err != nil {
		return err
	}
	if n != int32(sf.partitions) {
		logger.Info("topic exists with another partition count; keeping it", "topic", kafka.topic, "partitions", n, "flag", sf.partitions)
	}
	srv := ingest.NewServer(logger)
	path, h := ledgerv1connect.NewLedgerServiceHandler(ledger.NewService(pub, pool, kafka.topic, sf.readWaitMax), ingest.HandlerOptions()...)
	srv.Mount(ledgerv1connect.LedgerServiceName, path, h)
	return srv.Serve(ctx, ln)
}

// applyFrom runs the ledger applier until ctx ends.
func applyFrom(ctx context.Context, logger *slog.Logger, kafka kafkaFlags, af applyFlags, pool *pgxpool.Pool) error {
	a, err := applier.New(applierConfig(logger, kafka, af), pool, ledger.Applier{})
	if err != nil {
		return err
	}
	if err := a.Run(ctx); err != nil {
		return fmt.Errorf("applier: %w", err)
	}
	return nil
}
