package cli

import (
	"github.com/heed-dev/heed"

	"context"
	"flag"
	"fmt"
	"io"
)

var migrateVerb = verb{
	name:    "migrate",
	summary: "create or upgrade heed's tables in the database schema",
	example: "heed migrate --database-url postgres://postgres@127.0.0.1:5432/heed",
	new:     func(d *heed.Domain) command { return &migrateCmd{db: dbFlags{dom: d}} },
}

type migrateCmd struct {
	db  dbFlags
	log logFlags
}

func (c *migrateCmd) flags(fs *flag.FlagSet) {
	c.db.register(fs, "", "Postgres URL to migrate, e.g. postgres://postgres@127.0.0.1:5432/heed")
	c.log.register(fs)
}

func (c *migrateCmd) run(ctx context.Context, stdout, stderr io.Writer) error {
	logger, err := c.log.logger(stderr)
	if err != nil {
		return err
	}
	if err := c.db.validate(); err != nil {
		return err
	}
	pool, err := openDB(ctx, c.db, 2, true, logger)
	if err != nil {
		return err
	}
	pool.Close()
	fmt.Fprintf(stdout, "schema %s is up to date\n", c.db.schema)
	return nil
}
