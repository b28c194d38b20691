package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/outbox"
)

var relayVerb = verb{
	name:    "relay",
	summary: "publish the follow-up events handlers emit (the outbox), apart from apply (run apply with --relay=false then)",
	example: "heed relay --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func(d *heed.Domain) command { return &relayCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}} },
}

// relayCmd runs one relay for every origin partition of the topic's outbox.
// A Postgres advisory lock per schema and topic makes one relay run at a
// time: another waits, and takes over when the first stops or dies.
type relayCmd struct {
	kafka kafkaFlags
	db    dbFlags
	obs   obsFlags
	log   logFlags
	poll  time.Duration
}

func (c *relayCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL of the projection whose outbox to publish, e.g. postgres://postgres@127.0.0.1:5432/heed")
	registerRelayPoll(fs, &c.poll)
	c.obs.register(fs, "127.0.0.1:9466", false)
	c.log.register(fs)
}

func (c *relayCmd) run(ctx context.Context, _, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := firstError(c.db.validate(), positive("relay-poll", c.poll), c.kafka.sec.Validate()); err != nil {
		return err
	}
	x, stop, err := startOps(ctx, c.obs, "heed-relay", logger)
	if err != nil {
		return err
	}
	defer stop()
	pool, err := openDB(ctx, c.db, 4, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	x.metrics.WatchPool(pool)
	unlock, err := relayLock(ctx, pool, c.db.schema, c.kafka.topic, logger)
	if err != nil {
		return err
	}
	defer unlock()
	adminCl, err := c.kafka.newClient()
	if err != nil {
		return err
	}
	defer adminCl.Close()
	x.commonChecks(c.db, pool, adminCl)
	x.exportPositions(c.kafka, pool, adminCl)
	pub, err := relayPublisher(ctx, logger, c.kafka, pool, adminCl, x)
	if err != nil {
		return err
	}
	defer pub.Close()
	relay := outbox.New(pool, pub, outbox.Config{Topic: c.kafka.topic, Poll: c.poll, Logger: logger.With("component", "relay")})
	x.metrics.WatchRelay(relay)
	logger.Info("relay started", "topic", c.kafka.topic, "schema", c.db.schema)
	return relay.Run(ctx)
}

// relayLock takes the advisory lock of schema's relay of topic on a
// connection of its own, waiting while another relay holds it; unlock
// releases it with the connection.
func relayLock(ctx context.Context, pool *pgxpool.Pool, schema, topic string, logger *slog.Logger) (unlock func(), err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("acquire a connection for the relay's lock: %w", err)
	}
	const lockSQL = `SELECT pg_try_advisory_lock(hashtextextended('heed-relay/' || $1 || '/' || $2, 0))`
	for logged := false; ; {
		var ok bool
		if err := conn.QueryRow(ctx, lockSQL, schema, topic).Scan(&ok); err != nil {
			conn.Release()
			return nil, fmt.Errorf("take the relay's lock: %w", err)
		}
		if ok {
			// Closing the connection releases the lock, whatever state the
			// session is in.
			return func() { _ = conn.Hijack().Close(context.Background()) }, nil
		}
		if !logged {
			logger.Info("another relay of this topic and schema runs; waiting to take over", "topic", topic, "schema", schema)
			logged = true
		}
		select {
		case <-ctx.Done():
			conn.Release()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
