package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"errors"

	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/shell"
)

var devVerb = verb{
	name:    "dev",
	summary: "run everything in one process: embedded broker, Postgres, server and applier",
	example: "heed dev",
	new: func(d *heed.Domain) command {
		return &devCmd{kafka: kafkaFlags{dom: d}, db: dbFlags{dom: d}, apply: applyFlags{dom: d}}
	},
}

type devCmd struct {
	kafka        kafkaFlags
	db           dbFlags
	serve        serveFlags
	apply        applyFlags
	relay        relayFlags
	dataDir      string
	brokerListen string
	obs          obsFlags
	auth         authFlags
	log          logFlags
}

func (c *devCmd) flags(fs *flag.FlagSet) {
	c.kafka.register(fs, false)
	c.db.register(fs, "", "Postgres URL; empty: the local server at 127.0.0.1:5432 (database heed), else a private cluster under --data-dir")
	c.serve.register(fs)
	c.apply.register(fs)
	c.relay.register(fs)
	registerShutdown(fs, &c.serve.shutdownTimeout)
	fs.StringVar(&c.dataDir, "data-dir", defaultDataDir, "where the embedded broker (and a private Postgres, if one is needed) keep their data, one heed dev or broker at a time")
	fs.StringVar(&c.brokerListen, "broker-listen", devstack.DefaultBrokerListen, "address the embedded broker serves the Kafka protocol on")
	c.obs.register(fs, "127.0.0.1:9464", true)
	c.auth.register(fs)
	c.log.register(fs)
}

func (c *devCmd) run(ctx context.Context, stdout, stderr io.Writer) (err error) {
	c.apply.shutdownTimeout = c.serve.shutdownTimeout // one --shutdown-timeout for both
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.validate(logger); err != nil {
		return err
	}
	// The data dir's lock comes first: a second heed dev on the directory
	// stops here, before it binds a port, touches the broker's data or
	// starts (or adopts) the private Postgres that lives there too.
	kafkaDir := filepath.Join(c.dataDir, "kafka")
	// A run that fails leaves no empty directories it created behind (a
	// typo'd --data-dir, a database that refuses).
	for _, dir := range []string{c.dataDir, kafkaDir} {
		if _, statErr := os.Stat(dir); errors.Is(statErr, fs.ErrNotExist) {
			defer func() {
				if err == nil {
					return
				}
				// The lock's file, once released, then the directory if
				// that left it empty (os.Remove leaves one that is not).
				if entries, rerr := os.ReadDir(dir); rerr == nil && len(entries) == 1 && entries[0].Name() == devstack.LockFile {
					os.Remove(filepath.Join(dir, devstack.LockFile)) //nolint:errcheck // best effort, as below
				}
				os.Remove(dir) //nolint:errcheck // only when empty: what a failed run created and left
			}()
		}
	}
	lock, err := devstack.LockDataDir(kafkaDir, devstack.Holder{Program: "heed dev", Broker: c.brokerListen})
	if err != nil {
		return brokerError(err, "--broker-listen")
	}
	defer lock.Release()

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
	x, stop, err = startOps(ctx, c.obs, "heed-dev", logger)
	if err != nil {
		return err
	}
	defer stop()

	// Postgres before the broker: a database that refuses leaves no broker
	// data behind in a data directory this run created.
	pg, err := devstack.ResolvePostgres(ctx, devstack.PostgresConfig{URL: c.db.url, DataDir: c.dataDir, Logger: logger})
	if err != nil {
		return err
	}
	defer pg.Close()
	c.db.url = pg.URL()

	broker, err := devstack.StartBroker(ctx, devstack.BrokerConfig{
		Listen:     c.brokerListen,
		DataDir:    kafkaDir,
		Lock:       lock,
		Partitions: int32(c.serve.partitions),
		Logger:     logger.With("component", "broker"),
	})
	if err != nil {
		return brokerError(err, "--broker-listen")
	}
	defer broker.Close()
	c.kafka.brokers = strings.Join(broker.Addrs(), ",")
	pool, err := openDB(ctx, c.db, int32(c.serve.partitions)+8, true, logger)
	if err != nil {
		return err
	}
	defer pool.Close()

	addr := ln.Addr().String()
	// The banner comes once the server checked the topic against the
	// projection, so that a refusal is never preceded by it.
	scheme, authNote := "http", "none: open to anyone who reaches this loopback address (--auth-tokens-file turns tokens on)"
	if sec.tls != nil {
		scheme = "https"
	}
	if sec.guard != nil {
		authNote = "bearer tokens from " + c.auth.tokensFile
	} else if !loopback(c.serve.listen) {
		authNote = "none (--insecure-no-auth)"
	}
	metricsNote := "off (--metrics-listen \"\")"
	if c.obs.metricsListen != "" {
		metricsNote = "http://" + c.obs.metricsListen + "/metrics (and /healthz, /readyz)"
	}
	banner := func() {
		fmt.Fprintf(stdout, program+` dev is running (Ctrl-C stops it; state survives a restart)
  broker    %s (embedded, data in %s), topic %s
  postgres  %s, schema %s
  server    %s://%s (Connect, gRPC, gRPC-Web; reflection on)
  auth      %s
  metrics   %s
%s`, broker.Addrs()[0], kafkaDir, c.kafka.topic, pg.Source(), c.db.schema, scheme, addr, authNote, metricsNote, grpcurlFor(c.db.dom.BannerText(addr), c.auth)) // one write: readers of the banner see it whole
	}

	// The applier starts once the server found the topic to match the
	// projection: a refusal stops dev before anything is applied.
	served := make(chan struct{})
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return serveOn(gctx, logger, c.kafka, c.serve, c.db, pool, ln, x, sec, func() { banner(); close(served) })
	})
	g.Go(func() error {
		select {
		case <-served:
		case <-gctx.Done():
			return nil
		}
		return applyFrom(gctx, logger, c.kafka, c.apply, c.relay, c.db, pool, x, c.obs)
	})
	return g.Wait()
}

// validate checks every flag before dev starts anything or prints its
// banner.
func (c *devCmd) validate(logger *slog.Logger) error {
	if err := firstError(
		nonEmpty("data-dir", c.dataDir, defaultDataDir),
		c.db.validateIfSet(),
		c.serve.validate(), corsNeedsTokens(c.serve, c.auth),
		c.apply.validateBatch(), c.apply.validateRetention(),
	); err != nil {
		return err
	}
	// The embedded broker's address stands in for the one it will have.
	kafka := c.kafka
	kafka.brokers = c.brokerListen
	if kafka.brokers == "" {
		kafka.brokers = devstack.DefaultBrokerListen
	}
	icfg, acfg := ingestConfig(logger, kafka, c.serve), applierConfig(logger, kafka, c.apply)
	return firstError(icfg.Validate(), acfg.Validate())
}

// grpcurlFor rewrites a banner's `grpcurl -plaintext` commands for the
// server's security: with TLS they trust the served certificate (a dev
// certificate is its own CA; name yours with -cacert otherwise) and, with
// --client-ca, present a client certificate; with tokens they send one,
// from $HEED_TOKEN.
func grpcurlFor(text string, a authFlags) string {
	if a.tlsCert == "" && a.tokensFile == "" {
		return text
	}
	opts := "-plaintext "
	if a.tlsCert != "" {
		opts = "-cacert " + shell.Word(a.tlsCert) + " "
		if a.clientCA != "" {
			opts += "-cert client.pem -key client-key.pem "
		}
	}
	if a.tokensFile != "" {
		opts += `-H "Authorization: Bearer $HEED_TOKEN" `
	}
	out := strings.ReplaceAll(text, "grpcurl -plaintext ", "grpcurl "+opts)
	if out == text {
		return text
	}
	var notes []string
	if a.tokensFile != "" {
		notes = append(notes, "HEED_TOKEN is a token whose hash is in --auth-tokens-file (heed token new prints a pair)")
	}
	if a.clientCA != "" {
		notes = append(notes, "client.pem and client-key.pem: a client certificate signed by --client-ca")
	}
	for _, n := range notes {
		out += "  (" + named(n) + ")\n"
	}
	return out
}
