package schema

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/heed-dev/heed/internal/shell"
)

// sqlstateNoDatabase is invalid_catalog_name: the server answered, but the
// database the connection asked for does not exist.
const sqlstateNoDatabase = "3D000"

// MissingDatabaseError reports that the server at Host:Port answered but
// has no database Database. Its message says how to create it; callers add
// where the URL came from.
type MissingDatabaseError struct {
	Host     string
	Port     uint16
	User     string
	Database string
	Err      error // the server's error
}

func (e *MissingDatabaseError) Error() string {
	return fmt.Sprintf("database %q does not exist on %s:%d: create it with %s (or %s)",
		e.Database, e.Host, e.Port, e.createdb(), e.psql())
}

func (e *MissingDatabaseError) Unwrap() error { return e.Err }

// createdb is the createdb command that creates the database.
func (e *MissingDatabaseError) createdb() string {
	return fmt.Sprintf("createdb -h %s -p %d -U %s %s", shell.Word(e.Host), e.Port, shell.Word(e.User), shell.Word(e.Database))
}

// psql is the psql command that creates the database, connected to the
// server's postgres database.
func (e *MissingDatabaseError) psql() string {
	return fmt.Sprintf("psql -h %s -p %d -U %s -d postgres -c %s", shell.Word(e.Host), e.Port, shell.Word(e.User),
		shell.Quote("create database "+sqlIdent(e.Database)))
}

// AsMissingDatabase returns err as a *MissingDatabaseError when it carries
// the server's answer (SQLSTATE 3D000) that the database databaseURL names
// does not exist, and nil otherwise.
func AsMissingDatabase(databaseURL string, err error) *MissingDatabaseError {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != sqlstateNoDatabase {
		return nil
	}
	cfg, perr := pgconn.ParseConfig(databaseURL)
	if perr != nil {
		return nil
	}
	return &MissingDatabaseError{Host: cfg.Host, Port: cfg.Port, User: cfg.User, Database: cfg.Database, Err: err}
}

var plainIdent = regexp.MustCompile(`^[a-z_][a-z0-9_]*$`)

// sqlIdent quotes name as an SQL identifier unless it needs no quotes.
func sqlIdent(name string) string {
	if plainIdent.MatchString(name) {
		return name
	}
	return pgx.Identifier{name}.Sanitize()
}
