package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/auth"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/netsec"
	"github.com/heed-dev/heed/observe"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// ops is what serve, apply and dev share for operations: the metrics
// registry, the readiness checks and tracing (nil when off).
type ops struct {
	metrics *observe.Metrics
	health  *observe.Health
	tracing *observe.Tracing

	positionsOnce sync.Once // dev's serve and apply share one ops: the positions are exported once
}

// startOps serves metrics and health on o.metricsListen ("" serves none, but
// the registry and checks still back the gRPC health service) and sets up
// tracing from the OTEL_* variables. stop flushes traces.
func startOps(ctx context.Context, o obsFlags, service string, logger *slog.Logger) (*ops, func(), error) {
	x := &ops{metrics: observe.NewMetrics(), health: observe.NewHealth()}
	x.metrics.WatchHealth(x.health)
	tracing, shutdown, err := observe.TracingFromEnv(ctx, service)
	if err != nil {
		return nil, nil, err
	}
	x.tracing = tracing
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdown(sctx)
	}
	if tracing != nil {
		logger.Info("tracing on: spans go to the OTLP endpoint of the OTEL_EXPORTER_OTLP_* variables")
	}
	if o.metricsListen != "" {
		ln, err := observe.Listen(o.metricsListen)
		if err != nil {
			stop()
			return nil, nil, err
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := observe.Serve(sctx, ln, x.metrics, x.health, logger); err != nil {
				logger.Error("metrics server stopped", "err", err)
			}
		}()
		flush := stop
		stop = func() { // the server is gone, and logs nothing more, once stop returns
			cancel()
			<-done
			flush()
		}
	}
	return x, stop, nil
}

// kafkaOpts are the options of the verb's producer and consumer clients:
// TLS, SASL, the Kafka metrics, tracing.
func (x *ops) kafkaOpts(kafka kafkaFlags, client string) ([]kgo.Opt, error) {
	sec, err := kafka.sec.Opts()
	if err != nil {
		return nil, err
	}
	opts := append(sec, x.metrics.KafkaOpts(client)...)
	return append(opts, x.tracing.KafkaOpts()...), nil
}

// commonChecks are the readiness checks of serve and apply: the database
// answers and is migrated, the broker answers.
func (x *ops) commonChecks(db dbFlags, pool *pgxpool.Pool, cl *kgo.Client) {
	x.health.Add(
		observe.Check{Name: "database", Fn: func(ctx context.Context) error { return pool.Ping(ctx) }},
		observe.Check{Name: "migrations", Fn: func(ctx context.Context) error {
			return schema.CheckMigrated(ctx, pool, db.schema, db.dom.Sets())
		}},
		observe.Check{Name: "broker", Fn: func(ctx context.Context) error { return cl.Ping(ctx) }},
	)
}

// positions reads the projection's applied positions and the topic's ends.
func positions(kafka kafkaFlags, pool *pgxpool.Pool, cl *kgo.Client) observe.Positions {
	return observe.Positions{Pool: pool, Topic: kafka.topic, Ends: func(ctx context.Context) (map[int32]int64, error) {
		return consistency.ListEndOffsets(ctx, cl, kafka.topic)
	}}
}

// exportPositions exports the projection's applied positions, the topic's
// ends, the lag and the quarantine as metrics (once per process): every verb
// that reads the projection and the topic does, so that lag shows whether
// or not an applier runs.
func (x *ops) exportPositions(kafka kafkaFlags, pool *pgxpool.Pool, cl *kgo.Client) {
	x.positionsOnce.Do(func() { x.metrics.WatchPositions(positions(kafka, pool, cl)) })
}

// applyChecks add the applier's readiness checks (the projection's topic is
// the broker's; no more than maxLag records wait) and exports its positions,
// lag and quarantine as metrics.
func (x *ops) applyChecks(kafka kafkaFlags, pool *pgxpool.Pool, cl *kgo.Client, maxLag int64) {
	pos := positions(kafka, pool, cl)
	x.exportPositions(kafka, pool, cl)
	x.health.Add(observe.Check{Name: "topic", Fn: func(ctx context.Context) error {
		rec, ok, err := topic.Recorded(ctx, pool, kafka.topic)
		if err != nil || !ok {
			return err
		}
		live, err := topic.Describe(ctx, cl, kafka.topic)
		if err != nil {
			return err
		}
		if live.ID != rec.ID {
			return fmt.Errorf("%w: the projection is built from %s, the broker has %s", topic.ErrOtherIncarnation, rec, live)
		}
		return nil
	}})
	if maxLag <= 0 {
		return
	}
	x.health.Add(observe.Check{Name: "lag", Fn: func(ctx context.Context) error {
		lag, err := pos.Lag(ctx)
		if err != nil {
			return err
		}
		if lag > maxLag {
			return fmt.Errorf("%d records wait to be applied, more than --ready-max-lag %d", lag, maxLag)
		}
		return nil
	}})
}

// serverSecurity is the server's TLS configuration (nil: cleartext) and its
// guard (nil: open), from the flags. listen is the address served, to refuse
// an open server beyond loopback.
// *x, once set, counts the guard's refusals.
func serverSecurity(ctx context.Context, a authFlags, listen string, x **ops, logger *slog.Logger) (serverSec, error) {
	sec, err := serverSecurityOf(ctx, a, listen, func(procedure string) {
		if *x != nil {
			(*x).metrics.Refused(procedure, connect.CodeUnauthenticated)
		}
	}, logger)
	return sec, err
}

func serverSecurityOf(ctx context.Context, a authFlags, listen string, refused func(string), logger *slog.Logger) (serverSec, error) {
	var tlsCfg *tls.Config
	if a.tlsCert != "" || a.tlsKey != "" {
		cfg, err := netsec.ServerTLS(a.tlsCert, a.tlsKey, a.clientCA)
		if err != nil {
			return serverSec{}, err
		}
		tlsCfg = cfg
	} else if a.clientCA != "" {
		return serverSec{}, errors.New("--client-ca needs --tls-cert and --tls-key: mutual TLS is TLS")
	}
	if a.tokensFile == "" {
		if !loopback(listen) && !a.insecureNoAuth {
			return serverSec{}, fmt.Errorf("refusing to serve on %s, which is not a loopback address, without authentication: anyone who reaches it could send commands; pass --auth-tokens-file (lines from `heed token new`), or --insecure-no-auth if something in front of heed authenticates", listen)
		}
		if a.insecureNoAuth && !loopback(listen) {
			logger.Warn("serving without authentication (--insecure-no-auth)", "listen", listen)
		}
		return serverSec{tls: tlsCfg}, nil
	}
	tokens, err := auth.Load(a.tokensFile, logger)
	if err != nil {
		return serverSec{}, err
	}
	go tokens.Watch(ctx, 2*time.Second)
	// Keys not named like a secret: the path and the count are not secrets,
	// and an operator needs both (redactAttr would hide tokens_file).
	logger.Info("RPCs need a bearer token", "path", a.tokensFile, "admitted", tokens.Len())
	return serverSec{tls: tlsCfg, guard: auth.Guard(tokens, logger, refused)}, nil
}

// loopback reports whether addr's host is a loopback address or localhost.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// warnDurability logs each of the topic's settings that break "an
// acknowledged command is durable" (ingest.Durability), once at start.
func warnDurability(ctx context.Context, cl *kgo.Client, topicName string, logger *slog.Logger) {
	d, err := ingest.DescribeDurability(ctx, cl, topicName)
	if err != nil {
		logger.Info("could not check the topic's durability settings", "topic", topicName, "err", err)
		return
	}
	for _, p := range d.Problems() {
		logger.Warn("the topic's settings break \"an acknowledged command is durable\"", "topic", topicName, "problem", p)
	}
}
