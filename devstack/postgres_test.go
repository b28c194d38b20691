package devstack_test

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

func queryString(ctx context.Context, t *testing.T, url, sql string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func exec(ctx context.Context, t *testing.T, url string, sqls ...string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	defer conn.Close(ctx)
	for _, sql := range sqls {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
}

func TestResolvePostgresGivenURL(t *testing.T) {
	url := testenv.PostgresURL(t)
	p, err := devstack.ResolvePostgres(t.Context(), devstack.PostgresConfig{URL: url, DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("ResolvePostgres: %v", err)
	}
	defer p.Close()
	if p.URL() != url || p.Source() != "given URL" {
		t.Errorf("got %q from %q, want %q from \"given URL\"", p.URL(), p.Source(), url)
	}
	p.Close()
	if got := queryString(t.Context(), t, url, "SELECT 'still up'"); got != "still up" {
		t.Errorf("got %q", got)
	}
}

func TestResolvePostgresGivenURLDown(t *testing.T) {
	url := fmt.Sprintf("postgres://u:s3cret@127.0.0.1:%d/x?sslmode=disable", testenv.FreePort(t))
	_, err := devstack.ResolvePostgres(t.Context(), devstack.PostgresConfig{URL: url})
	if err == nil {
		t.Fatal("ResolvePostgres succeeded with nothing listening")
	}
	if !strings.Contains(err.Error(), "--database-url") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error should name --database-url and hide the password: %v", err)
	}
}

// TestResolvePostgresGivenURLMissingDatabase names a database the server
// does not have: the error must say so and how to create it, not that the
// server does not answer.
func TestResolvePostgresGivenURLMissingDatabase(t *testing.T) {
	url := testenv.MissingDatabaseURL(t)
	_, err := devstack.ResolvePostgres(t.Context(), devstack.PostgresConfig{URL: url})
	if err == nil {
		t.Fatal("ResolvePostgres succeeded with a missing database")
	}
	var missing *schema.MissingDatabaseError
	if !errors.As(err, &missing) {
		t.Errorf("error %v (%T) does not wrap a *schema.MissingDatabaseError", err, err)
	}
	u, perr := neturl.Parse(url)
	if perr != nil {
		t.Fatal(perr)
	}
	name, createdb := strings.TrimPrefix(u.Path, "/"), fmt.Sprintf("createdb -h %s -p %s -U %s ", u.Hostname(), u.Port(), u.User.Username())
	for _, s := range []string{"--database-url", `database "` + name + `" does not exist`, createdb + name, "create database " + name} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "does not answer") {
		t.Errorf("error %q says the server does not answer; it did", err)
	}
}

func TestResolvePostgresLocalServer(t *testing.T) {
	if err := devstack.PingPostgres(t.Context(), devstack.LocalPostgresURL, 2*time.Second); err != nil {
		t.Skipf("no local server at %s: %v", devstack.LocalPostgresURL, err)
	}
	p, err := devstack.ResolvePostgres(t.Context(), devstack.PostgresConfig{DataDir: t.TempDir()})
	if err != nil {
		t.Fatalf("ResolvePostgres: %v", err)
	}
	defer p.Close()
	if p.Source() != "local server 127.0.0.1:5432" {
		t.Errorf("Source = %q", p.Source())
	}
	if got := queryString(t.Context(), t, p.URL(), "SELECT current_database()"); got != devstack.DevDatabase {
		t.Errorf("connected to database %q, want %q", got, devstack.DevDatabase)
	}
}

// TestResolvePostgresPrivateCluster points the local-server step at a dead
// port, so resolution starts a private cluster; a second resolution reuses
// the remembered port and keeps the data.
func TestResolvePostgresPrivateCluster(t *testing.T) {
	ctx := t.Context()
	dataDir := t.TempDir()
	dead := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", testenv.FreePort(t))
	port := testenv.FreePort(t) // avoid 5433: other test processes may race for it
	if err := os.MkdirAll(filepath.Join(dataDir, "postgres"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "postgres", "port"), []byte(strconv.Itoa(port)), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := devstack.PostgresConfig{DataDir: dataDir, Logger: testenv.Logger(t)}

	p, err := devstack.ResolvePostgresWithLocal(ctx, cfg, dead)
	if errors.Is(err, devstack.ErrNoPostgresBinaries) {
		testenv.Require(t, "PostgreSQL server binaries", err)
	}
	if err != nil {
		t.Fatalf("ResolvePostgres: %v", err)
	}
	t.Cleanup(p.Close)
	wantSource := fmt.Sprintf("private cluster in %s on port %d", filepath.Join(dataDir, "postgres"), port)
	if p.Source() != wantSource {
		t.Errorf("Source = %q, want %q", p.Source(), wantSource)
	}
	if got := queryString(ctx, t, p.URL(), "SELECT current_database()"); got != devstack.DevDatabase {
		t.Errorf("connected to %q, want %q", got, devstack.DevDatabase)
	}
	exec(ctx, t, p.URL(), "CREATE TABLE kept (v text)", "INSERT INTO kept VALUES ('across restarts')")
	p.Close()
	if err := devstack.PingPostgres(ctx, p.URL(), time.Second); err == nil {
		t.Fatal("private cluster still answers after Close")
	}

	p2, err := devstack.ResolvePostgresWithLocal(ctx, cfg, dead)
	if err != nil {
		t.Fatalf("ResolvePostgres again: %v", err)
	}
	t.Cleanup(p2.Close)
	if p2.URL() != p.URL() {
		t.Errorf("second URL %q differs from first %q", p2.URL(), p.URL())
	}
	if got := queryString(ctx, t, p2.URL(), "SELECT v FROM kept"); got != "across restarts" {
		t.Errorf("got %q", got)
	}
}

func TestClusterStopStart(t *testing.T) {
	ctx := t.Context()
	c := testenv.Cluster(t)
	url := c.URL("postgres")
	exec(ctx, t, url, "CREATE TABLE t (v text)", "INSERT INTO t VALUES ('hello')")
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := devstack.PingPostgres(ctx, url, time.Second); err == nil {
		t.Fatal("cluster answers after Stop")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	if got := queryString(ctx, t, url, "SELECT v FROM t"); got != "hello" {
		t.Errorf("after restart got %q", got)
	}

	// A crash (immediate stop) keeps what was committed: the next start
	// recovers it from the WAL.
	exec(ctx, t, url, "INSERT INTO t VALUES ('committed before the crash')")
	if err := c.Crash(ctx); err != nil {
		t.Fatalf("Crash: %v", err)
	}
	if err := devstack.PingPostgres(ctx, url, time.Second); err == nil {
		t.Fatal("cluster answers after Crash")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("Start after Crash: %v", err)
	}
	if got := queryString(ctx, t, url, "SELECT string_agg(v, ', ' ORDER BY v) FROM t"); got != "committed before the crash, hello" {
		t.Errorf("after the crash and a start got %q", got)
	}

	// A second StartCluster on the same directory adopts the running server.
	c2, err := devstack.StartCluster(ctx, c.Dir(), 0, testenv.Logger(t))
	if err != nil {
		t.Fatalf("StartCluster on a running cluster: %v", err)
	}
	if c2.Port() != c.Port() {
		t.Errorf("adopted port %d, want %d", c2.Port(), c.Port())
	}
	c2.Close()
	if err := devstack.PingPostgres(ctx, url, time.Second); err == nil {
		t.Fatal("cluster answers after the adopting Cluster closed")
	}
	c.Close() // already stopped by c2: must not fail or hang
}
