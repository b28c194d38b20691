// Package schema owns the Postgres schema heed keeps its tables in: it opens
// connection pools whose search_path is that schema, and applies the migrations
// each component (dedup, applier, a domain) ships.
//
// Every table heed reads or writes lives in one configurable schema (default
// "heed"), never in a hard-coded "public", so that a rebuild can fill a fresh
// schema and swap it in.
package schema

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Default is the schema name used when none is configured.
const Default = "heed"

var validName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// Validate reports whether name can be used as a schema name: lower-case letters,
// digits and underscores, starting with a letter or underscore, at most 63 bytes.
func Validate(name string) error {
	if !validName.MatchString(name) {
		return fmt.Errorf("schema name %q: use 1-63 lower-case letters, digits or underscores, starting with a letter", name)
	}
	return nil
}

// PoolConfig parses a database URL into a pool config whose connections use
// schemaName as their search_path. maxConns > 0 overrides the pool size.
func PoolConfig(databaseURL, schemaName string, maxConns int32) (*pgxpool.Config, error) {
	if err := Validate(schemaName); err != nil {
		return nil, err
	}
	if err := checkScheme(databaseURL); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w (expected postgres://user@host:port/db?sslmode=disable)", err)
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = schemaName
	if maxConns > 0 {
		cfg.MaxConns = maxConns
	}
	return cfg, nil
}

// Connect opens a pool for databaseURL with search_path set to schemaName and
// checks that the server answers. The caller closes the pool.
//
// Errors: an unparseable URL or schema name; a server that answers but has
// no such database (wraps a *MissingDatabaseError saying how to create it);
// a server that refuses the login (wraps a *LoginRefusedError saying what to
// change); a server that does not answer or refuses the connection.
func Connect(ctx context.Context, databaseURL, schemaName string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := PoolConfig(databaseURL, schemaName, maxConns)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		if missing := AsMissingDatabase(databaseURL, err); missing != nil {
			return nil, fmt.Errorf("connect to %s@%s:%d: %w; or point --database-url / HEED_DATABASE_URL at an existing database",
				cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, missing)
		}
		if refused := AsLoginRefused(databaseURL, err); refused != nil {
			return nil, fmt.Errorf("connect to database %s: %w", cfg.ConnConfig.Database, refused)
		}
		return nil, fmt.Errorf("connect to database %s@%s:%d/%s: %w (is Postgres running? check --database-url / HEED_DATABASE_URL)",
			cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database, err)
	}
	return pool, nil
}

// ErrNotMigrated is returned by CheckMigrated when a component's tables are
// missing or behind the binary's migrations.
var ErrNotMigrated = errors.New("database schema is not migrated")
