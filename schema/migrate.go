package schema

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

// Migrations is one component's migration set: goose SQL files (NNNNN_name.sql
// with -- +goose Up/Down sections) at the root of FS. Each set keeps its own
// version table, heed_<Name>_migrations, in the schema.
type Migrations struct {
	Name string
	FS   fs.FS
}

func provider(pool *pgxpool.Pool, schemaName string, m Migrations, logger *slog.Logger) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	opts := []goose.ProviderOption{
		goose.WithTableName(fmt.Sprintf("%s.heed_%s_migrations", schemaName, m.Name)),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	}
	if logger != nil {
		opts = append(opts, goose.WithSlog(logger))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, stdlib.OpenDBFromPool(pool), m.FS, opts...)
	if err != nil {
		return nil, fmt.Errorf("load %s migrations: %w", m.Name, err)
	}
	return p, nil
}

// Migrate creates schemaName if needed and applies every pending migration of
// each set, in the order given. It is safe to run from several processes at
// once: a Postgres advisory lock serialises them. pool's search_path must be
// schemaName (see Connect).
func Migrate(ctx context.Context, pool *pgxpool.Pool, schemaName string, sets []Migrations, logger *slog.Logger) error {
	if err := Validate(schemaName); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+schemaName); err != nil {
		return fmt.Errorf("create schema %s: %w", schemaName, err)
	}
	for _, m := range sets {
		p, err := provider(pool, schemaName, m, logger)
		if err != nil {
			return err
		}
		_, err = p.Up(ctx)
		p.Close()
		if err != nil {
			return fmt.Errorf("apply %s migrations to schema %s: %w", m.Name, schemaName, err)
		}
	}
	return nil
}

// CheckMigrated returns an error wrapping ErrNotMigrated, naming the component
// and the fix, when any set has pending migrations in schemaName.
func CheckMigrated(ctx context.Context, pool *pgxpool.Pool, schemaName string, sets []Migrations) error {
	for _, m := range sets {
		p, err := provider(pool, schemaName, m, nil)
		if err != nil {
			return err
		}
		current, target, err := p.GetVersions(ctx)
		p.Close()
		if err != nil {
			return fmt.Errorf("read %s migration version in schema %s: %w (run `heed migrate`)", m.Name, schemaName, err)
		}
		if current < target {
			return fmt.Errorf("%w: %s is at version %d of %d in schema %s; run `heed migrate` with the same --database-url and --schema",
				ErrNotMigrated, m.Name, current, target, schemaName)
		}
	}
	return nil
}
