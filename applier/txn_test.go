package applier

import (
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// txPool returns a pool of one connection on a fresh database with a table t.
func txPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := schema.Connect(t.Context(), testenv.PostgresURL(t), schema.Default, 1)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	for _, q := range []string{`CREATE SCHEMA ` + schema.Default, `CREATE TABLE t (n int)`} {
		if _, err := pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	return pool
}

// COMMIT of a failed transaction answers ROLLBACK without an error; the
// batch's COMMIT callback turns that into one. stillOpen tells an open
// transaction from a failed or ended one.
func TestCommitOfFailedTransaction(t *testing.T) {
	pool := txPool(t)
	ctx := t.Context()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer release(conn)
	if err := stillOpen(conn); err == nil {
		t.Error("stillOpen outside a transaction returned no error")
	}
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := stillOpen(conn); err != nil {
		t.Errorf("stillOpen in an open transaction: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT 1/0"); err == nil {
		t.Fatal("division by zero succeeded")
	}
	if err := stillOpen(conn); err == nil {
		t.Error("stillOpen in a failed transaction returned no error")
	}
	b := &pgx.Batch{}
	b.Queue("COMMIT").Exec(checkCommitted)
	if err := conn.SendBatch(ctx, b).Close(); !errors.Is(err, errCommitRolledBack) {
		t.Errorf("COMMIT of a failed transaction: err = %v, want errCommitRolledBack", err)
	}
}

// release rolls back what a connection left open and pools it again, and
// never pools a closed connection.
func TestRelease(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup []string
		close bool
		// pooled: the connection is back in the pool afterwards.
		pooled bool
	}{
		{"idle", nil, false, true},
		{"open transaction", []string{"BEGIN", "INSERT INTO t VALUES (1)"}, false, true},
		{"failed transaction", []string{"BEGIN", "INSERT INTO t VALUES (1)", "SELECT 1/0"}, false, true},
		{"closed connection", []string{"BEGIN", "INSERT INTO t VALUES (1)"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := txPool(t)
			ctx := t.Context()
			conn, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			pid := conn.Conn().PgConn().PID()
			for _, q := range tc.setup {
				_, _ = conn.Exec(ctx, q) // the division by zero fails on purpose
			}
			if tc.close {
				_ = conn.Conn().PgConn().Close(ctx) // as a cancelled context leaves it
			}
			release(conn)

			after, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer after.Release()
			if st := after.Conn().PgConn().TxStatus(); st != 'I' {
				t.Errorf("pooled connection's transaction status = %q, want 'I'", st)
			}
			if reused := after.Conn().PgConn().PID() == pid; reused != tc.pooled {
				t.Errorf("connection reused = %v, want %v", reused, tc.pooled)
			}
			var n int
			if err := after.QueryRow(ctx, `SELECT count(*) FROM t`).Scan(&n); err != nil || n != 0 {
				t.Errorf("t has %d rows (%v) after release, want 0: the open transaction was not rolled back", n, err)
			}
		})
	}
}
