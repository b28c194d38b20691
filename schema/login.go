package schema

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// LoginRefusedError is a server's refusal of a connection's login (SQLSTATE
// class 28: no such role, a wrong password, no pg_hba.conf entry): the server
// answers, so "is it running?" is the wrong question; the message names the
// role and what to change.
type LoginRefusedError struct {
	Host string
	Port uint16
	User string
	Err  *pgconn.PgError
}

func (e *LoginRefusedError) Error() string {
	fix := "put a role that may log in, and its password, in --database-url / HEED_DATABASE_URL"
	switch {
	case e.Err.Code == "28000" && strings.Contains(e.Err.Message, "does not exist"):
		fix = fmt.Sprintf("create the role (as a superuser: CREATE ROLE %s LOGIN CREATEDB) or name an existing one in --database-url / HEED_DATABASE_URL", sqlIdent(e.User))
	case e.Err.Code == "28P01":
		fix = "check the password in --database-url / HEED_DATABASE_URL (or PGPASSWORD, ~/.pgpass)"
	case strings.Contains(e.Err.Message, "pg_hba.conf"):
		fix = "allow this client in the server's pg_hba.conf, or connect as a role and from an address it allows"
	}
	return fmt.Sprintf("the server at %s:%d answered and refused the login of role %q: %s (SQLSTATE %s); %s",
		e.Host, e.Port, e.User, e.Err.Message, e.Err.Code, fix)
}

func (e *LoginRefusedError) Unwrap() error { return e.Err }

// AsLoginRefused returns err as a *LoginRefusedError when it carries a
// server's refusal of the login (SQLSTATE class 28) for databaseURL, and nil
// otherwise.
func AsLoginRefused(databaseURL string, err error) *LoginRefusedError {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || !strings.HasPrefix(pgErr.Code, "28") {
		return nil
	}
	cfg, perr := pgconn.ParseConfig(databaseURL)
	if perr != nil {
		return nil
	}
	return &LoginRefusedError{Host: cfg.Host, Port: cfg.Port, User: cfg.User, Err: pgErr}
}

// checkScheme refuses a URL of another database (mysql://, say) before pgx
// parses it: what pgx would say is that it is no keyword/value string.
func checkScheme(databaseURL string) error {
	scheme, _, ok := strings.Cut(databaseURL, "://")
	if !ok || strings.ContainsAny(scheme, " =") {
		return nil // a keyword/value string, or no URL at all: pgx says what is wrong
	}
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql":
		return nil
	}
	return fmt.Errorf("the database URL's scheme is %q: heed needs PostgreSQL, postgres://user@host:port/db?sslmode=disable", scheme)
}
