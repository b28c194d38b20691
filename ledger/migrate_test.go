package ledger_test

import (
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/dedup"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/schema"
)

// upTo is fsys with only its migrations numbered up to n.
func upTo(t *testing.T, fsys fs.FS, n int) fs.FS {
	t.Helper()
	out := fstest.MapFS{}
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		prefix, _, _ := strings.Cut(e.Name(), "_")
		if v, err := strconv.Atoi(prefix); err != nil || v > n {
			continue
		}
		data, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = &fstest.MapFile{Data: data}
	}
	return out
}

// The migration to one row per event moves every command result into its
// processed-event row, keyed by its account, with the balance as a
// CommandResult, marks events dropped from the quarantine dropped, and leaves
// the outcomes GetCommandResult reads and the dedup statuses as they were.
func TestMigrateResultsIntoProcessedEvents(t *testing.T) {
	ctx := t.Context()
	pool, err := schema.Connect(ctx, testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	old := make([]schema.Migrations, len(ledger.Schema))
	for i, m := range ledger.Schema {
		old[i] = m
		switch m.Name {
		case "dedup":
			old[i].FS = upTo(t, m.FS, 1)
		case "ledger":
			old[i].FS = upTo(t, m.FS, 2)
		}
	}
	if err := schema.Migrate(ctx, pool, schema.Default, old, testenv.Logger(t)); err != nil {
		t.Fatal(err)
	}
	applied, rejected, big, dropped := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	orphan := uuid.New() // a result without a processed row: left behind, dropped with its table
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO processed_events (event_id, fingerprint) VALUES ($1, 11), ($2, 12), ($3, 13), ($4, 14)`,
			[]any{applied, rejected, big, dropped}},
		{`INSERT INTO command_results VALUES ($1, 'r1', 'acct-1', 2, '', 250), ($2, 'r2', 'acct-1', 3, 'insufficient funds', 250),
  ($3, 'r3', 'acct-2', 2, '', 9223372036854775807), ($4, 'r4', 'acct-9', 2, '', 1)`, []any{applied, rejected, big, orphan}},
		{`INSERT INTO quarantine (topic, partition, "offset", kind, reason, event_id, key, value, state)
VALUES ('t', 0, 9, 'poison', 'bad; dropped by ops', $1, 'acct-3', '\x00', 'dropped')`, []any{dropped}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := schema.Migrate(ctx, pool, schema.Default, ledger.Schema, testenv.Logger(t)); err != nil {
		t.Fatalf("migrate to the latest version: %v", err)
	}
	for _, c := range []struct {
		id      uuid.UUID
		key     string
		outcome dedup.Outcome
		reason  string
		balance int64
	}{
		{applied, "acct-1", dedup.Applied, "", 250},
		{rejected, "acct-1", dedup.Rejected, "insufficient funds", 250},
		{big, "acct-2", dedup.Applied, "", 9223372036854775807},
		{dropped, "", dedup.Dropped, "bad; dropped by ops", 0},
	} {
		rows, err := dedup.Results(ctx, pool, c.id)
		if err != nil || len(rows) != 1 {
			t.Fatalf("results of %s: %v, %v", c.key, rows, err)
		}
		r := rows[0]
		var res ledgerv1.CommandResult
		if err := proto.Unmarshal(r.Result, &res); err != nil {
			t.Fatalf("result bytes %x: %v", r.Result, err)
		}
		if r.Key != c.key || r.Outcome != c.outcome || r.Reason != c.reason || res.GetBalanceAfter() != c.balance {
			t.Errorf("migrated row = %+v (balance %d), want key %q %v %q balance %d", r, res.GetBalanceAfter(), c.key, c.outcome, c.reason, c.balance)
		}
		// Redelivered after the migration, each is a duplicate of itself.
		key := c.key
		if key == "" {
			key = "acct-3"
		}
		st, err := dedup.Claim(ctx, pool, []dedup.Item{{ID: c.id, Key: key, Fingerprint: r.Fingerprint}})
		if err != nil || st[0] != dedup.Duplicate {
			t.Errorf("claim of migrated event %s/%s = %v, %v; want duplicate", c.id, key, st, err)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_tables WHERE tablename = 'command_results' AND schemaname = current_schema()`).Scan(&n); err != nil || n != 0 {
		t.Errorf("the table command_results still exists (%d, %v)", n, err)
	}
	// The view left in its place reads the balances back, for SQL readers.
	for id, want := range map[uuid.UUID]int64{applied: 250, big: 9223372036854775807, rejected: 250} {
		var got int64
		if err := pool.QueryRow(ctx, `SELECT balance_after FROM command_results WHERE event_id = $1`, id).Scan(&got); err != nil || got != want {
			t.Errorf("command_results view: balance_after %d (%v), want %d", got, err, want)
		}
	}
}
