package cli

import (
	"github.com/heed-dev/heed"

	"context"

	"flag"
	"io"
	"log/slog"

	"github.com/heed-dev/heed/ingest"
)

var serveVerb = verb{
	name:    "serve",
	summary: "serve the domain's commands and queries (Connect, gRPC, gRPC-Web on one port)",
	example: "heed serve --brokers 127.0.0.1:9092 --database-url postgres://postgres@127.0.0.1:5432/heed --listen 127.0.0.1:8080",
	new:     func(d *heed.Domain) command { return &serveCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}} },
}

type serveCmd struct {
	kafka kafkaFlags
	db    dbFlags
	serve serveFlags
	obs   obsFlags
	auth  authFlags
	log   logFlags
}

func (c *serveCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, true)
	c.db.register(fs, "", "Postgres URL for the read side, e.g. postgres://postgres@127.0.0.1:5432/heed")
	c.serve.register(fs)
	registerShutdown(fs, &c.serve.shutdownTimeout)
	c.obs.register(fs, "127.0.0.1:9464", false)
	c.auth.register(fs)
	c.log.register(fs)
}

func (c *serveCmd) run(ctx context.Context, _, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.validate(logger); err != nil {
		return err
	}
	var x *ops // set below; the guard counts refusals once it is
	sec, err := serverSecurity(ctx, c.auth, c.serve.listen, &x, logger)
	if err != nil {
		return err
	}
	ln, err := ingest.Listen(c.serve.listen)
	if err != nil {
		return err
	}
	defer ln.Close()
	var stop func()
	x, stop, err = startOps(ctx, c.obs, "heed-serve", logger)
	if err != nil {
		return err
	}
	defer stop()
	pool, err := openDB(ctx, c.db, 0, false, logger)
	if err != nil {
		return err
	}
	defer pool.Close()
	return serveOn(ctx, logger, c.kafka, c.serve, c.db, pool, ln, x, sec, nil)
}

// validate checks every flag before serve starts anything.
func (c *serveCmd) validate(logger *slog.Logger) error {
	if err := firstError(c.db.validate(), c.serve.validate(), corsNeedsTokens(c.serve, c.auth), c.kafka.sec.Validate()); err != nil {
		return err
	}
	cfg := ingestConfig(logger, c.kafka, c.serve)
	return cfg.Validate()
}
