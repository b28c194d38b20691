package devstack

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PingPostgres connects to the database at dbURL and pings it, giving up
// after timeout. It returns the connection or ping error as is.
func PingPostgres(ctx context.Context, dbURL string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return conn.Ping(ctx)
}

// EnsureDatabase creates database name on the server at adminURL (a URL of
// any existing database, as a user allowed to CREATE DATABASE) unless it
// exists, and returns adminURL pointing at name instead. Concurrent callers
// creating the same database both succeed.
//
// Errors: connecting, lacking the CREATEDB privilege, or adminURL not being
// a URL (key=value connection strings are not supported).
func EnsureDatabase(ctx context.Context, adminURL, name string) (string, error) {
	dbURL, err := WithDatabase(adminURL, name)
	if err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return "", fmt.Errorf("connect to create database %q: %w", name, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return "", fmt.Errorf("check whether database %q exists: %w", name, err)
	}
	if exists {
		return dbURL, nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database: created concurrently
			return dbURL, nil
		}
		return "", fmt.Errorf("create database %q: %w; create it by hand or connect as a user with CREATEDB", name, err)
	}
	return dbURL, nil
}

// WithDatabase returns the postgres:// URL dbURL with its database replaced
// by name. Errors: dbURL is not a URL.
func WithDatabase(dbURL, name string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", fmt.Errorf("database URL %s is not a postgres:// URL; pass one like postgres://user@host:5432/db", redact(dbURL))
	}
	u.Path = "/" + name
	u.RawPath = ""
	return u.String(), nil
}
