package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
)

// tally is a second domain for these tests, in the simple form, with a table
// of its own.
func tally() *heed.Domain {
	d := heed.NewDomain("tally", heed.Migrations(fstest.MapFS{
		"00001_tallies.sql": {Data: []byte("-- +goose Up\nCREATE TABLE tallies (key text PRIMARY KEY, n bigint NOT NULL);\n-- +goose Down\nDROP TABLE tallies;\n")},
	}))
	heed.On(d, func(ctx context.Context, tx heed.Tx, ev heed.Event[*ledgerv1.FundsDeposited]) (heed.Result, error) {
		_, err := tx.Exec(ctx, `INSERT INTO tallies VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET n = tallies.n + excluded.n`, ev.Key, ev.Msg.GetAmount())
		return heed.Result{}, err
	})
	return d
}

// Two domains in one binary: a verb must say which it runs; each migrates
// its own schema with its own tables; help lists both; and domains that
// would share a name, topic, group or schema are refused.
func TestSeveralDomains(t *testing.T) {
	clearHeedEnv(t)
	domains := []*heed.Domain{ledger.Domain(), tally()}
	url := testenv.PostgresURL(t)
	runIt := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		code := Run(t.Context(), domains, args, &stdout, &stderr)
		return code, stdout.String(), stderr.String()
	}

	if code, _, stderr := runIt("migrate", "--database-url", url); code != 2 || !strings.Contains(stderr, "say which with --domain or HEED_DOMAIN") {
		t.Errorf("migrate without --domain: exit %d, stderr %q; want 2 naming --domain", code, stderr)
	}
	if code, _, stderr := runIt("migrate", "--domain", "nope", "--database-url", url); code != 2 || !strings.Contains(stderr, `unknown domain "nope": this binary runs ledger, tally`) {
		t.Errorf("migrate --domain nope: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runIt("migrate", "--domain", "tally", "--database-url", url); code != 0 {
		t.Fatalf("migrate --domain tally: exit %d: %s", code, stderr)
	}
	t.Setenv("HEED_DOMAIN", "ledger")
	if code, _, stderr := runIt("migrate", "--database-url", url); code != 0 {
		t.Fatalf("HEED_DOMAIN=ledger migrate: exit %d: %s", code, stderr)
	}
	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for _, c := range []struct{ schema, table string }{{"tally", "tallies"}, {"tally", "processed_events"}, {"heed", "accounts"}, {"heed", "processed_events"}} {
		var ok bool
		if err := pool.QueryRow(t.Context(), `SELECT to_regclass($1) IS NOT NULL`, c.schema+"."+c.table).Scan(&ok); err != nil || !ok {
			t.Errorf("table %s.%s: exists %v, err %v", c.schema, c.table, ok, err)
		}
	}
	var wrong bool
	if err := pool.QueryRow(t.Context(), `SELECT to_regclass('tally.accounts') IS NOT NULL OR to_regclass('heed.tallies') IS NOT NULL`).Scan(&wrong); err != nil || wrong {
		t.Errorf("a domain's table in the other's schema: %v, %v", wrong, err)
	}

	code, stdout, _ := runIt("help")
	if code != 0 || !strings.Contains(stdout, "Domains: ledger, tally") || !strings.Contains(stdout, "bench") {
		t.Errorf("help: exit %d:\n%s", code, stdout)
	}
	code, stdout, _ = runIt("help", "apply", "--domain", "tally")
	if code != 0 || !strings.Contains(stdout, `(default "tally.events")`) || !strings.Contains(stdout, `(default "tally-applier")`) || !strings.Contains(stdout, "-domain") {
		t.Errorf("help apply --domain tally: exit %d:\n%s", code, stdout)
	}
	var stdout2, stderr2 bytes.Buffer
	if code := Run(t.Context(), []*heed.Domain{tally()}, []string{"help"}, &stdout2, &stderr2); code != 0 || strings.Contains(stdout2.String(), "bench") || strings.Contains(stdout2.String(), "Domains:") {
		t.Errorf("help of a tally-only binary: exit %d, lists bench or domains:\n%s", code, stdout2.String())
	}

	for _, tc := range []struct {
		name    string
		domains []*heed.Domain
		want    string
	}{
		{"same name", []*heed.Domain{tally(), tally()}, "domains tally and tally share the name"},
		{"same topic", []*heed.Domain{tally(), heed.NewDomain("other", heed.Topic("tally.events"))}, `share the topic "tally.events"`},
		{"same schema", []*heed.Domain{ledger.Domain(), heed.NewDomain("x", heed.Schema("heed"))}, `share the schema "heed"`},
		{"no events", []*heed.Domain{heed.NewDomain("empty")}, "domain empty: no event types"},
		{"none", nil, "no domain"},
	} {
		var stdout, stderr bytes.Buffer
		if code := Run(t.Context(), tc.domains, []string{"help"}, &stdout, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%s: exit %d, stderr %q; want 2 and %q", tc.name, code, stderr.String(), tc.want)
		}
	}
}

// Two domains' event IDs for one request ID differ, and the ledger's are
// the ones heed derived before domains had ID spaces.
func TestDomainEventIDs(t *testing.T) {
	l, a, b := ledger.Domain().IDs(), tally().IDs(), heed.NewDomain("other").IDs()
	const uuidRequest = "0190a2b4-7c1e-7d4b-8c2d-6a1f0e9b4c3d"
	for _, rid := range []string{"d1", uuidRequest} {
		ids := map[string]bool{l.EventID(rid).String(): true, a.EventID(rid).String(): true, b.EventID(rid).String(): true}
		if len(ids) != 3 {
			t.Errorf("request ID %s: event IDs of three domains collide: %v", rid, ids)
		}
		if a.EventID(rid) != tally().IDs().EventID(rid) {
			t.Errorf("request ID %s: tally's event ID is not stable", rid)
		}
	}
	if got := l.EventID(uuidRequest).String(); got != uuidRequest {
		t.Errorf("the ledger's event ID of a UUID request ID = %s, want the request ID (as before domains)", got)
	}
	if got, want := l.EventID("d1"), envelope.EventID("d1"); got != want {
		t.Errorf("the ledger's event ID of d1 = %s, want %s (envelope.EventID, as before domains)", got, want)
	}
}
