package devstack

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/heed-dev/heed/internal/shell"
)

// Layout of a private cluster directory.
const (
	clusterDataSubdir = "data"       // PGDATA
	clusterPortFile   = "port"       // the port, remembered across restarts
	clusterLogFile    = "server.log" // the server's stderr
	clusterCloseWait  = 30 * time.Second
	// maxSocketPath leaves room for "/.s.PGSQL.65535" within the 107 byte
	// Unix socket path limit.
	maxSocketPath = 90
)

// Cluster is a private PostgreSQL cluster ("instance") that devstack
// created and runs from the PostgreSQL server binaries. It listens on
// 127.0.0.1 only, with trust authentication for the "postgres" superuser.
//
// Layout of its directory: data/ (PGDATA), port (the port number),
// server.log (the server log; read it when start fails) and, when the path
// is short enough, the Unix socket.
//
// Concurrency: all methods are safe for concurrent use.
type Cluster struct {
	dir     string // absolute
	dataDir string
	logFile string
	bins    serverBinaries
	run     pgRunner
	logger  *slog.Logger

	mu      sync.Mutex
	port    int
	running bool
	closed  bool
}

// StartCluster starts the private cluster in dir, creating dir and running
// initdb (-U postgres --auth=trust -E UTF8 --locale=C) the first time.
// port 0 reuses the port remembered in dir/port, or picks a free one; the
// chosen port is remembered. A server already running on the same data
// directory (e.g. left behind by a crashed heed dev) is adopted, and Close
// stops it.
//
// Errors: ErrNoPostgresBinaries (wrapped) when the server binaries are not
// installed; running as root without a "postgres" OS user; initdb or
// pg_ctl failing (the message includes their output and the tail of
// server.log); port already in use. ctx bounds initdb and the start.
func StartCluster(ctx context.Context, dir string, port int, logger *slog.Logger) (*Cluster, error) {
	bins, err := findServerBinaries(ctx)
	if err != nil {
		return nil, fmt.Errorf("postgres cluster %s: %w", dir, err)
	}
	run, err := newPGRunner()
	if err != nil {
		return nil, fmt.Errorf("postgres cluster %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("postgres cluster %s: resolve path: %w", dir, err)
	}
	c := &Cluster{
		dir:     abs,
		dataDir: filepath.Join(abs, clusterDataSubdir),
		logFile: filepath.Join(abs, clusterLogFile),
		bins:    bins,
		run:     run,
		logger:  orDiscard(logger),
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("postgres cluster: create %s: %w; choose a writable data directory", abs, err)
	}
	if err := run.own(abs); err != nil {
		return nil, fmt.Errorf("postgres cluster: %w", err)
	}
	if port == 0 {
		port = rememberedPort(abs)
	}
	if err := c.initdb(ctx); err != nil {
		return nil, err
	}
	if running, runningPort := c.status(ctx); running {
		if port == 0 || port == runningPort {
			c.port, c.running = runningPort, true
			c.logger.Info("postgres: adopting already running private cluster", "dir", abs, "port", runningPort)
			return c, c.rememberPort()
		}
		c.port, c.running = runningPort, true
		if err := c.Stop(ctx); err != nil {
			return nil, err
		}
	}
	if port == 0 {
		if port, err = freePort(); err != nil {
			return nil, fmt.Errorf("postgres cluster: %w", err)
		}
	}
	c.port = port
	if err := c.rememberPort(); err != nil {
		return nil, err
	}
	if err := c.Start(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// rememberedPort returns the port recorded in a private cluster directory
// by an earlier StartCluster, or 0 if there is none.
func rememberedPort(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, clusterPortFile))
	if err != nil {
		return 0
	}
	p, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || p <= 0 || p > 65535 {
		return 0
	}
	return p
}

// URL returns the connection URL of database db as the postgres superuser.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.Port(), db)
}

// Port returns the TCP port the cluster listens on (127.0.0.1).
func (c *Cluster) Port() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.port
}

// Dir returns the cluster's directory (absolute).
func (c *Cluster) Dir() string { return c.dir }

// Start starts the server after Stop, on the same directory and port, and
// waits until it accepts connections. Starting a running cluster does
// nothing.
//
// Errors: the port being taken meanwhile, pg_ctl failing (with the tail of
// server.log), Close having been called.
func (c *Cluster) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("postgres cluster %s: start after Close; call StartCluster again", c.dir)
	}
	if c.running {
		return nil
	}
	if !portFree(c.port) {
		return fmt.Errorf("postgres cluster %s: port %d on 127.0.0.1 is already in use; stop what uses it, or delete %s to pick another port", c.dir, c.port, filepath.Join(c.dir, clusterPortFile))
	}
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1", c.port)
	if len(c.dir) <= maxSocketPath {
		opts += " -k " + shell.Quote(c.dir) // pg_ctl passes its -o options through /bin/sh
	} else {
		opts += " -c unix_socket_directories=''"
	}
	start := time.Now()
	out, err := c.run.command(ctx, c.bins.pgCtl, "start", "-w", "-t", "120",
		"-D", c.dataDir, "-l", c.logFile, "-o", opts).CombinedOutput()
	if err != nil {
		return fmt.Errorf("postgres cluster %s: pg_ctl start on port %d: %w\n%s\nserver.log:\n%s\nfix the cause above, or delete %s to start from scratch",
			c.dir, c.port, err, strings.TrimSpace(string(out)), tailFile(c.logFile, 2000), c.dir)
	}
	c.running = true
	c.logger.Info("postgres: private cluster started", "dir", c.dir, "port", c.port, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// Stop shuts the server down (pg_ctl stop -m fast: disconnects clients,
// checkpoints) and waits for it. Stopping a stopped cluster does nothing.
//
// Errors: pg_ctl failing, with its output.
func (c *Cluster) Stop(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx, "fast")
}

// Crash stops the server as a crash would (pg_ctl stop -m immediate: clients
// cut off, no checkpoint; the next Start recovers from the WAL). Crashing a
// stopped cluster does nothing.
//
// Errors: pg_ctl failing, with its output.
func (c *Cluster) Crash(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked(ctx, "immediate")
}

func (c *Cluster) stopLocked(ctx context.Context, mode string) error {
	if !c.running {
		return nil
	}
	out, err := c.run.command(ctx, c.bins.pgCtl, "stop", "-w", "-t", "60", "-m", mode, "-D", c.dataDir).CombinedOutput()
	if err != nil {
		if running, _ := c.status(ctx); !running {
			c.running = false
			return nil
		}
		return fmt.Errorf("postgres cluster %s: pg_ctl stop: %w\n%s\nstop it by hand with: pg_ctl stop -D %s", c.dir, err, strings.TrimSpace(string(out)), c.dataDir)
	}
	c.running = false
	c.logger.Info("postgres: private cluster stopped", "dir", c.dir, "port", c.port)
	return nil
}

// Close stops the server, waiting at most 30 seconds, and logs instead of
// returning errors. Calling it again does nothing.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	ctx, cancel := context.WithTimeout(context.Background(), clusterCloseWait)
	defer cancel()
	if err := c.stopLocked(ctx, "fast"); err != nil {
		c.logger.Warn("postgres: stopping private cluster failed", "err", err)
	}
}

// initdb creates PGDATA unless it already holds a cluster. A PGDATA left
// half-initialised (no PG_VERSION) by an interrupted initdb is removed
// first.
func (c *Cluster) initdb(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(c.dataDir, "PG_VERSION")); err == nil {
		return nil
	}
	if err := os.RemoveAll(c.dataDir); err != nil {
		return fmt.Errorf("postgres cluster: remove incomplete %s: %w; delete it by hand", c.dataDir, err)
	}
	start := time.Now()
	out, err := c.run.command(ctx, c.bins.initdb, "-D", c.dataDir, "-U", "postgres", "--auth=trust",
		"-E", "UTF8", "--locale=C", "--no-sync").CombinedOutput()
	if err != nil {
		return fmt.Errorf("postgres cluster: initdb %s: %w\n%s\nfix the cause above, or pass --database-url", c.dataDir, err, strings.TrimSpace(string(out)))
	}
	c.logger.Info("postgres: initialised private cluster", "dir", c.dir, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// status reports whether a server runs on PGDATA and, if so, its port
// (from postmaster.pid).
func (c *Cluster) status(ctx context.Context) (bool, int) {
	err := c.run.command(ctx, c.bins.pgCtl, "status", "-D", c.dataDir).Run()
	if err != nil { // exit status 3: not running; 4: no data directory
		return false, 0
	}
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return true, 0
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return true, 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(lines[3]))
	return true, p
}

// rememberPort records c.port in the cluster directory.
func (c *Cluster) rememberPort() error {
	path := filepath.Join(c.dir, clusterPortFile)
	if err := os.WriteFile(path, []byte(strconv.Itoa(c.port)+"\n"), 0o644); err != nil {
		return fmt.Errorf("postgres cluster: write %s: %w; choose a writable data directory", path, err)
	}
	return nil
}
