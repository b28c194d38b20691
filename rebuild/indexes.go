package rebuild

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The bulk path: a fresh schema's secondary indexes (those that enforce
// nothing: not a primary key, not unique) are dropped before the replay and
// built once it has caught up, which costs less than keeping them up to date
// row by row. Their definitions wait in heed_rebuild_indexes meanwhile, so a
// rebuild that crashed builds them when it is run again and catches up. The
// indexes that enforce something (the processed-event key, the accounts'
// key) stay: the replay relies on them.

// deferIndexes drops schemaName's secondary indexes, recording their
// definitions, when fresh (the schema holds no applied record yet; a resumed
// rebuild recorded them before).
func deferIndexes(ctx context.Context, pool *pgxpool.Pool, schemaName string, fresh bool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // after COMMIT a no-op
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+pgx.Identifier{schemaName, "heed_rebuild_indexes"}.Sanitize()+` (name text PRIMARY KEY, def text NOT NULL)`); err != nil {
		return fmt.Errorf("rebuild: record deferred indexes: %w", err)
	}
	if !fresh {
		return tx.Commit(ctx)
	}
	rows, err := tx.Query(ctx, `SELECT c.relname, pg_get_indexdef(c.oid) FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND NOT i.indisunique AND NOT i.indisprimary`, schemaName)
	if err != nil {
		return fmt.Errorf("rebuild: list secondary indexes: %w", err)
	}
	type index struct{ name, def string }
	idx, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (index, error) {
		var x index
		err := row.Scan(&x.name, &x.def)
		return x, err
	})
	if err != nil {
		return fmt.Errorf("rebuild: list secondary indexes: %w", err)
	}
	for _, x := range idx {
		if _, err := tx.Exec(ctx, `INSERT INTO `+pgx.Identifier{schemaName, "heed_rebuild_indexes"}.Sanitize()+` (name, def) VALUES ($1, $2) ON CONFLICT DO NOTHING`, x.name, x.def); err != nil {
			return fmt.Errorf("rebuild: record index %s: %w", x.name, err)
		}
		if _, err := tx.Exec(ctx, `DROP INDEX `+pgx.Identifier{schemaName, x.name}.Sanitize()); err != nil {
			return fmt.Errorf("rebuild: drop index %s until the replay caught up: %w", x.name, err)
		}
	}
	return tx.Commit(ctx)
}

// buildIndexes builds the indexes deferIndexes dropped.
func buildIndexes(ctx context.Context, pool *pgxpool.Pool, schemaName string, log *slog.Logger) error {
	table := pgx.Identifier{schemaName, "heed_rebuild_indexes"}.Sanitize()
	rows, err := pool.Query(ctx, `SELECT name, def FROM `+table+` ORDER BY name`)
	if err != nil {
		return fmt.Errorf("rebuild: read deferred indexes: %w", err)
	}
	var names, defs []string
	var name, def string
	if _, err := pgx.ForEachRow(rows, []any{&name, &def}, func() error {
		names, defs = append(names, name), append(defs, def)
		return nil
	}); err != nil {
		return fmt.Errorf("rebuild: read deferred indexes: %w", err)
	}
	for i := range names {
		began := time.Now()
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, defs[i])
		if err == nil {
			_, err = tx.Exec(ctx, `DELETE FROM `+table+` WHERE name = $1`, names[i])
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		if err != nil {
			_ = tx.Rollback(context.Background())
			return fmt.Errorf("rebuild: build index %s: %w", names[i], err)
		}
		log.Info("built an index the replay deferred", "index", names[i], "took", time.Since(began).Round(time.Millisecond))
	}
	return nil
}
