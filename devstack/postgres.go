package devstack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/heed-dev/heed/schema"
)

// Defaults used by ResolvePostgres.
const (
	// LocalPostgresURL is the local server ResolvePostgres tries second.
	LocalPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	// DevDatabase is the database heed dev uses on the local server and
	// on a private cluster; it is created when missing.
	DevDatabase = "heed"
	// PrivateClusterPort is the port a new private cluster prefers.
	PrivateClusterPort = 5433

	localPingTimeout = 2 * time.Second
	givenPingTimeout = 10 * time.Second
)

// PostgresConfig configures ResolvePostgres.
type PostgresConfig struct {
	// URL is an explicit database URL (--database-url). When set it is
	// used as is, after a ping; nothing else is tried.
	URL string

	// DataDir is heed dev's data directory; a private cluster lives in
	// DataDir/postgres. Required unless URL is set or the local server
	// answers.
	DataDir string

	// Logger receives progress messages. Nil discards them.
	Logger *slog.Logger
}

// Postgres is the database heed dev uses, as chosen by ResolvePostgres.
//
// Concurrency: all methods are safe for concurrent use.
type Postgres struct {
	url       string
	source    string
	cluster   *Cluster // non-nil only for a private cluster we run
	closeOnce sync.Once
}

// ResolvePostgres finds a database for heed dev, in this order:
//
//  1. cfg.URL, if set, used as is once it answers a ping (10s);
//  2. the local server at LocalPostgresURL, if it answers a ping within 2s:
//     the DevDatabase database is created there if missing and its URL
//     returned;
//  3. a private cluster in cfg.DataDir/postgres (see StartCluster) on the
//     port it used last time, else PrivateClusterPort if free, else a free
//     port, with a DevDatabase database.
//
// Errors: cfg.URL naming a database the server does not have (wraps a
// *schema.MissingDatabaseError saying how to create it); cfg.URL not
// answering; no PostgreSQL reachable and no server binaries installed
// (wraps ErrNoPostgresBinaries; the message says to install postgresql or
// pass --database-url); the private cluster failing to start; the database
// not being creatable.
func ResolvePostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	return resolvePostgres(ctx, cfg, LocalPostgresURL)
}

// resolvePostgres is ResolvePostgres with the local server URL as a
// parameter, so tests can make the local server unreachable.
func resolvePostgres(ctx context.Context, cfg PostgresConfig, localURL string) (*Postgres, error) {
	logger := orDiscard(cfg.Logger)
	if cfg.URL != "" {
		if err := PingPostgres(ctx, cfg.URL, givenPingTimeout); err != nil {
			if missing := schema.AsMissingDatabase(cfg.URL, err); missing != nil {
				return nil, fmt.Errorf("postgres: --database-url %s: %w; or pass the URL of an existing database", redact(cfg.URL), missing)
			}
			if refused := schema.AsLoginRefused(cfg.URL, err); refused != nil {
				return nil, fmt.Errorf("postgres: --database-url %s: %w", redact(cfg.URL), refused)
			}
			return nil, fmt.Errorf("postgres: --database-url %s does not answer: %w; check that the server runs and the URL's host, port, user, password and database are right", redact(cfg.URL), err)
		}
		return &Postgres{url: cfg.URL, source: "given URL"}, nil
	}

	localHost := hostOf(localURL)
	pingErr := PingPostgres(ctx, localURL, localPingTimeout)
	if pingErr == nil {
		dbURL, err := EnsureDatabase(ctx, localURL, DevDatabase)
		if err != nil {
			return nil, fmt.Errorf("postgres: local server %s: %w", localHost, err)
		}
		logger.Info("postgres: using local server", "addr", localHost, "database", DevDatabase)
		return &Postgres{url: dbURL, source: "local server " + localHost}, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("postgres: %w", ctx.Err())
	}
	logger.Info("postgres: no usable local server, using a private cluster", "addr", localHost, "reason", pingErr)

	if _, err := findServerBinaries(ctx); errors.Is(err, ErrNoPostgresBinaries) {
		return nil, &msgError{
			msg:   fmt.Sprintf("no PostgreSQL reachable at %s and no server binaries (initdb, pg_ctl) found; install postgresql or pass --database-url postgres://...", localHost),
			cause: err,
		}
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("postgres: no PostgreSQL reachable at %s and no data directory for a private cluster; pass a data directory or --database-url postgres://...", localHost)
	}
	dir := filepath.Join(cfg.DataDir, "postgres")
	cluster, err := StartCluster(ctx, dir, choosePort(dir), logger)
	if err != nil {
		return nil, fmt.Errorf("postgres: no PostgreSQL reachable at %s, and the private cluster failed: %w", localHost, err)
	}
	dbURL, err := EnsureDatabase(ctx, cluster.URL("postgres"), DevDatabase)
	if err != nil {
		cluster.Close()
		return nil, fmt.Errorf("postgres: private cluster in %s: %w", dir, err)
	}
	return &Postgres{
		url:     dbURL,
		source:  fmt.Sprintf("private cluster in %s on port %d", dir, cluster.Port()),
		cluster: cluster,
	}, nil
}

// URL returns the database URL to connect to.
func (p *Postgres) URL() string { return p.url }

// Source describes where the database comes from, for humans: "given URL",
// "local server 127.0.0.1:5432" or "private cluster in .heed/postgres on
// port 5433".
func (p *Postgres) Source() string { return p.source }

// Close stops the private cluster if ResolvePostgres started one (waiting
// at most 30 seconds); for a given URL or the local server it does
// nothing. Calling it again does nothing.
func (p *Postgres) Close() {
	p.closeOnce.Do(func() {
		if p.cluster != nil {
			p.cluster.Close()
		}
	})
}

// choosePort picks the port for the private cluster in dir: the one used
// last time (also when it is busy because that cluster still runs, which
// StartCluster adopts), else PrivateClusterPort if free, else 0 (any free
// port).
func choosePort(dir string) int {
	if p := rememberedPort(dir); p != 0 {
		if portFree(p) {
			return p
		}
		if _, err := os.Stat(filepath.Join(dir, clusterDataSubdir, "postmaster.pid")); err == nil {
			return p
		}
	}
	if portFree(PrivateClusterPort) {
		return PrivateClusterPort
	}
	return 0
}

// hostOf returns the host:port of a URL, or the URL redacted if it has
// none.
func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Host
	}
	return redact(raw)
}

// redact returns raw with any password masked; connection strings that
// are not URLs are not echoed at all.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return "(the given connection string)"
	}
	return u.Redacted()
}
