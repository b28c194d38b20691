package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/devstack"
)

// PostgresURLEnv names the environment variable holding the admin URL of
// the PostgreSQL server tests use; it defaults to devstack.LocalPostgresURL.
const PostgresURLEnv = "HEED_TEST_DATABASE_URL"

// PostgresURL returns the URL of a fresh, empty database
// (heedtest_<random hex>) on the test server: $HEED_TEST_DATABASE_URL, or
// postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable. The URL's
// user must be allowed to create databases. The database is dropped, with
// any open connections, in tb.Cleanup.
//
// If the server does not answer a ping within 2 seconds, Require policy
// applies (skip, or fail under CI). Creating the database failing is a
// test failure.
func PostgresURL(tb testing.TB) string {
	tb.Helper()
	admin := adminURL(tb)
	ctx := tb.Context()
	name := "heedtest_" + randomHex(8)
	dbURL, err := devstack.WithDatabase(admin, name)
	if err != nil {
		tb.Fatalf("testenv: %s: %v", PostgresURLEnv, err)
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Fatalf("testenv: connect to %s: %v", redacted(admin), err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		tb.Fatalf("testenv: create database %s: %v; the user in %s needs CREATEDB", name, err, PostgresURLEnv)
	}
	tb.Cleanup(func() { dropDatabase(tb, admin, name) })
	return dbURL
}

// MissingDatabaseURL returns the URL of a database that does not exist
// (heedtest_missing_<random hex>) on the test server PostgresURL uses,
// which answers: for tests of what a user who names a missing database is
// told. The server not answering follows Require policy.
func MissingDatabaseURL(tb testing.TB) string {
	tb.Helper()
	u, err := devstack.WithDatabase(adminURL(tb), "heedtest_missing_"+randomHex(8))
	if err != nil {
		tb.Fatalf("testenv: %s: %v", PostgresURLEnv, err)
	}
	return u
}

// adminURL returns $HEED_TEST_DATABASE_URL or devstack.LocalPostgresURL
// once it answers a ping within 2 seconds; otherwise Require policy applies.
func adminURL(tb testing.TB) string {
	tb.Helper()
	admin := os.Getenv(PostgresURLEnv)
	if admin == "" {
		admin = devstack.LocalPostgresURL
	}
	if err := devstack.PingPostgres(tb.Context(), admin, 2*time.Second); err != nil {
		Require(tb, "PostgreSQL", fmt.Errorf("%s: %w; start a server there (e.g. docker run -d -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15) or set %s to a server whose user may CREATE DATABASE", redacted(admin), err, PostgresURLEnv))
	}
	return admin
}

// dropDatabase drops name, disconnecting its sessions; failures are logged,
// not fatal, since a leaked test database harms nothing but space.
func dropDatabase(tb testing.TB, admin, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		tb.Logf("testenv: drop database %s: connect: %v", name, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		tb.Logf("testenv: drop database %s: %v", name, err)
	}
}

// randomHex returns 2n random hex digits.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand panics instead)
	return hex.EncodeToString(b)
}
