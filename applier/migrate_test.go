package applier_test

import (
	"context"
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// upTo is fsys with the migrations numbered up to n only.
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

// Migration 00004 gives the quarantined records and the parked keys stored
// before it their keys' hashes: a batch finds the keys parked before it, a
// re-drive finds their records and releases them.
func TestMigrateKeyHash(t *testing.T) {
	ctx := t.Context()
	cfg, err := schema.PoolConfig(testenv.PostgresURL(t), schema.Default, 4)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	migrate := func(applierFS fs.FS) {
		t.Helper()
		sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applierFS}}
		if err := schema.Migrate(ctx, pool, schema.Default, sets, testenv.Logger(t)); err != nil {
			t.Fatal(err)
		}
	}
	migrate(upTo(t, applier.Migrations, 3))
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{counterTableSQL, nil},
		{`INSERT INTO quarantine (topic, partition, "offset", kind, reason, key, value) VALUES
('t', 0, 5, 'poison', 'junk', 'k1', '\xff'), ('t', 0, 6, 'parked', 'parked', 'k1', $1), ('t', 0, 7, 'poison', 'junk', NULL, '\xff')`,
			[]any{record(t, "k1", "k1-b", 2).Value}},
		{`INSERT INTO parked_keys (topic, partition, key) VALUES ('t', 0, 'k1'), ('t', 0, '')`, nil},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	migrate(applier.Migrations)

	var n int64
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM quarantine WHERE key_hash = sha256(coalesce(key, '')))
+ (SELECT count(*) FROM parked_keys WHERE key_hash = sha256(key))`).Scan(&n); err != nil || n != 5 {
		t.Fatalf("%d rows with their key's hash (%v), want 5", n, err)
	}
	// A later record of each parked key (k1, and no key) is parked; another
	// key's is not.
	later := func(off int64, key []byte) *kgo.Record {
		r := record(t, "x", "later-"+strconv.FormatInt(off, 10), 1)
		r.Key, r.Offset = key, off
		return r
	}
	recs := []*kgo.Record{later(8, []byte("k1")), later(9, nil), record(t, "k2", "k2-a", 1)}
	recs[2].Offset = 10
	if stored, err := applier.QuarantineRaw(ctx, pool, new(counter), "t", recs); err != nil || stored != 2 {
		t.Fatalf("after the migration, a batch parked %d records (%v), want the 2 of parked keys", stored, err)
	}
	res, err := applier.Drop(ctx, pool, new(counter), "t", 0, 5, "junk")
	if err != nil {
		t.Fatal(err)
	}
	// Offset 6 applies; offset 8 is poison itself (its key is not its
	// envelope's aggregate), parked behind nothing else.
	if res.Applied != 1 || res.Poison != 8 {
		t.Errorf("drop of offset 5: %+v, want offset 6 applied and offset 8 left poison", res)
	}
	if got := testCounter(t, pool, "k1"); got != 2 {
		t.Errorf("counter k1 = %d after the re-drive, want 2", got)
	}
}

// testCounter reads one counter.
func testCounter(t *testing.T, pool *pgxpool.Pool, key string) int64 {
	t.Helper()
	var n int64
	if err := pool.QueryRow(context.Background(), `SELECT coalesce((SELECT n FROM counters WHERE key = $1), 0)`, key).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
