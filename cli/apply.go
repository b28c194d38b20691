package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"io"
	"log/slog"
)

var applyVerb = verb{
	name:    "apply",
	summary: "apply the topic's events to Postgres (one member of the applier group)",
	example: "heed apply --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed",
	new: func(d *heed.Domain) command {
		return &applyCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}, apply: applyFlags{dom: d}}
	},
}

type applyCmd struct {
	kafka kafkaFlags
	db    dbFlags
	apply applyFlags
	relay relayFlags
	obs   obsFlags
	log   logFlags
}

func (c *applyCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL to apply to, e.g. postgres://postgres@127.0.0.1:5432/heed")
	c.apply.register(fs)
	c.relay.register(fs)
	registerShutdown(fs, &c.apply.shutdownTimeout)
	c.obs.register(fs, "127.0.0.1:9465", true)
	c.log.register(fs)
}

func (c *applyCmd) run(ctx context.Context, _, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.validate(logger); err != nil {
		return err
	}
	x, stop, err := startOps(ctx, c.obs, "heed-apply", logger)
	if err != nil {
		return err
	}
	defer stop()
	pool, err := openDB(ctx, c.db, int32(c.apply.concurrency)+3, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	x.metrics.WatchPool(pool)
	return applyFrom(ctx, logger, c.kafka, c.apply, c.relay, c.db, pool, x, c.obs)
}

// validate checks every flag before apply starts anything.
func (c *applyCmd) validate(logger *slog.Logger) error {
	if err := firstError(c.db.validate(), c.apply.validateBatch(), positive("shutdown-timeout", c.apply.shutdownTimeout), c.apply.validateRetention(), c.kafka.sec.Validate()); err != nil {
		return err
	}
	cfg := applierConfig(logger, c.kafka, c.apply)
	return cfg.Validate()
}
