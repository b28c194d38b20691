package applier_test

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/sha256"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// migratedPool is a fresh database migrated for the applier, without a
// broker: for tests that store records directly.
func migratedPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	ctx := context.Background()
	cfg, err := schema.PoolConfig(testenv.PostgresURL(tb), schema.Default, 4)
	if err != nil {
		tb.Fatalf("pool config: %v", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		tb.Fatalf("open pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}}
	if err := schema.Migrate(ctx, pool, schema.Default, sets, testenv.Logger(tb)); err != nil {
		tb.Fatalf("migrate: %v", err)
	}
	return pool
}

// checkStoredWhole checks that the quarantine holds rec at its position with
// its key, value and headers byte for byte, a storable reason of bounded
// length, and that listing the quarantine by rec's key finds it.
func checkStoredWhole(tb testing.TB, pool *pgxpool.Pool, topic string, rec *kgo.Record) {
	tb.Helper()
	ctx := context.Background()
	got, err := applier.GetQuarantined(ctx, pool, topic, rec.Partition, rec.Offset)
	if err != nil {
		tb.Fatalf("offset %d (key of %d bytes) not in the quarantine: %v", rec.Offset, len(rec.Key), err)
	}
	if !bytes.Equal(got.Key, rec.Key) {
		tb.Errorf("offset %d: stored key of %d bytes differs from the record's %d bytes", rec.Offset, len(got.Key), len(rec.Key))
	}
	if !bytes.Equal(got.Value, rec.Value) {
		tb.Errorf("offset %d: stored value of %d bytes differs from the record's %d bytes", rec.Offset, len(got.Value), len(rec.Value))
	}
	if len(got.Headers) != len(rec.Headers) {
		tb.Errorf("offset %d: %d headers stored, the record has %d", rec.Offset, len(got.Headers), len(rec.Headers))
	} else {
		for i, h := range rec.Headers {
			g := got.Headers[i]
			if g.Key != h.Key || !bytes.Equal(g.Value, h.Value) || (g.Value == nil) != (h.Value == nil) {
				tb.Errorf("offset %d: header %d stored as %d+%d bytes (nil value %v), the record's is %d+%d (nil value %v)",
					rec.Offset, i, len(g.Key), len(g.Value), g.Value == nil, len(h.Key), len(h.Value), h.Value == nil)
			}
		}
	}
	if !storable(got.Reason) || len(got.Reason) > applier.MaxReasonBytes+64 {
		tb.Errorf("offset %d: reason of %d bytes is not bounded storable text", rec.Offset, len(got.Reason))
	}
	key := rec.Key
	if key == nil {
		key = []byte{}
	}
	p := rec.Partition
	// No limit: a fuzz run stores thousands of records under one key (the
	// minimizer tries the empty one often), more than the default 1,000.
	list, err := applier.ListQuarantine(ctx, pool, topic, applier.QuarantineFilter{Partition: &p, Key: key, All: true, Limit: math.MaxInt32})
	if err != nil {
		tb.Fatalf("list the quarantine by key: %v", err)
	}
	found := false
	for _, r := range list {
		found = found || r.Offset == rec.Offset
	}
	if !found {
		tb.Errorf("listing the quarantine by the key of offset %d does not find it", rec.Offset)
	}
}

// FuzzRawRecord feeds records of any key, value and header bytes and sizes
// (a key grown with random bytes to up to 256 KiB) through what a batch does before applying
// (decode, the parked keys, sort) and stores what it quarantines and parks in
// Postgres: storing never fails, and every record is stored whole. Each
// input is a junk-or-not record followed by a well-formed one of the same key
// (parked, or poison itself) and one of another key (applied).
func FuzzRawRecord(f *testing.F) {
	pool := migratedPool(f)
	f.Add([]byte("alice"), []byte("\xff\xfe not a protobuf"), "trace", []byte("x"), uint32(0))
	f.Add([]byte(nil), []byte(nil), "", []byte(nil), uint32(0))
	f.Add([]byte("k\x00\xff"), record(f, "k", "k1", 1).Value, "h\x00", []byte{0}, uint32(7))
	f.Add([]byte("big"), []byte("junk"), "h", bytes.Repeat([]byte{0xff}, 3000), uint32(20_000))
	f.Add([]byte("counter-7"), record(f, "counter-7", "c7", 1).Value, "", []byte(nil), uint32(0))
	var offset atomic.Int64
	f.Fuzz(func(t *testing.T, key, value []byte, hkey string, hval []byte, grow uint32) {
		if n := int(grow % (256 << 10)); n > len(key) {
			// Grown with bytes drawn from the key: random ones, which
			// Postgres cannot compress into an index entry as it could a
			// repeated key.
			more := make([]byte, n-len(key))
			_, _ = rand.NewChaCha8(sha256.Sum256(key)).Read(more)
			key = append(key, more...)
		}
		off := offset.Add(3) - 3
		junk := &kgo.Record{Partition: 0, Offset: off, Key: key, Value: value}
		if hkey != "" || hval != nil {
			junk.Headers = []kgo.RecordHeader{{Key: hkey, Value: hval}, {Key: "null"}}
		}
		// An envelope holds UTF-8 only: a key that is not has no well-formed
		// record, and the same key's record is poison itself.
		same := record(t, strings.ToValidUTF8(string(key), "?"), fmt.Sprintf("same-%d", off), 1)
		same.Key, same.Offset = key, off+1 // the record's own key, nil or not
		other := record(t, "other", fmt.Sprintf("other-%d", off), 1)
		other.Offset = off + 2
		stored, err := applier.QuarantineRaw(t.Context(), pool, new(counter), "fuzz", []*kgo.Record{junk, same, other})
		if err != nil {
			t.Fatalf("storing a record with a key of %d bytes, a value of %d and headers of %d: %v", len(key), len(value), len(hkey)+len(hval), err)
		}
		_, poison := applier.DecodeRecord(new(counter), junk)
		if poison == "" {
			return // a well-formed record: it and the rest apply; nothing stored
		}
		if stored != 2 {
			t.Fatalf("%d records quarantined or parked, want the junk one and the next of its key", stored)
		}
		checkStoredWhole(t, pool, "fuzz", junk)
		checkStoredWhole(t, pool, "fuzz", same)
		// The partition's parked keys, read back as a batch reads them, park
		// the key's later records, and only those.
		later := record(t, strings.ToValidUTF8(string(key), "?"), fmt.Sprintf("later-%d", off), 1)
		later.Key, later.Offset = key, off+3
		offset.Add(1)
		if n, err := applier.QuarantineRaw(t.Context(), pool, new(counter), "fuzz", []*kgo.Record{later}); err != nil || n != 1 {
			t.Fatalf("a later record of the parked key: %d stored, err %v; want it parked", n, err)
		}
	})
}

// randomBytes is n random bytes.
func randomBytes(tb testing.TB, n int) []byte {
	tb.Helper()
	b := make([]byte, n)
	if _, err := crand.Read(b); err != nil {
		tb.Fatal(err)
	}
	return b
}

// A junk record of any shape the broker accepts (hole 3 of issue 26: a 20 kB
// random key with a garbage value; a 1 MiB key, header and value), produced
// to the real broker with records of other keys around it, is quarantined
// whole (its key, value and headers read back byte for byte), parks its key,
// and the partition moves on: the other keys' records apply, before and
// after it.
func TestHugeRecordQuarantined(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name   string
		key    []byte
		value  []byte
		header []byte
	}{
		{"hole 3: 20 kB random key, garbage value", randomBytes(t, 20_000), randomBytes(t, 300), nil},
		{"1 MiB key, header and value", randomBytes(t, mib), randomBytes(t, mib), randomBytes(t, mib)},
	}
	for _, hc := range handlers() {
		for _, tc := range cases {
			t.Run(hc.name+"/"+tc.name, func(t *testing.T) {
				s := newStack(t)
				raiseMaxMessageBytes(t, s, 8*mib)
				cl, err := kgo.NewClient(kgo.SeedBrokers(s.broker...), kgo.DefaultProduceTopic(s.topic), kgo.ProducerBatchMaxBytes(8*mib))
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				junk := &kgo.Record{Key: tc.key, Value: tc.value}
				if tc.header != nil {
					junk.Headers = []kgo.RecordHeader{{Key: "big", Value: tc.header}}
				}
				later := record(t, "x", "x-later", 1)
				later.Key = tc.key // a well-formed record of the junk's key: parked behind it
				for _, r := range []*kgo.Record{record(t, "a", "a1", 1), junk, record(t, "b", "b1", 2), later, record(t, "a", "a2", 3)} {
					if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
						t.Fatalf("produce a record with a key of %d bytes: %v", len(r.Key), err)
					}
				}
				s.start(t, hc.make(new(counter)), 10*time.Second)
				testenv.Eventually(t, 60*time.Second, func() string {
					if p := s.position(t); p != 5 {
						return fmt.Sprintf("applied position %d, want 5: the partition does not move past the junk record", p)
					}
					return ""
				})
				s.checkState(t, state{counters: map[string]int64{"a": 4, "b": 2}, processed: 3, quarantined: 2, position: 5})
				junk.Partition, junk.Offset = 0, 1
				checkStoredWhole(t, s.pool, s.topic, junk)
				got, err := applier.GetQuarantined(t.Context(), s.pool, s.topic, 0, 3)
				// Its key is too long for an event (poison itself), and parked.
				if err != nil || got.Kind != "poison" || !bytes.Equal(got.Key, tc.key) {
					t.Errorf("offset 3 (the junk key's next record) = %s with a key of %d bytes, err %v; want it quarantined with the junk's key", got.Kind, len(got.Key), err)
				}
				// An operator drops both: the key, found by its hash, is
				// released.
				for _, off := range []int64{1, 3} {
					if _, err := applier.Drop(t.Context(), s.pool, hc.make(new(counter)), s.topic, 0, off, "junk"); err != nil {
						t.Fatalf("drop offset %d: %v", off, err)
					}
				}
				if n := s.value(t, `SELECT count(*) FROM parked_keys`); n != 0 {
					t.Errorf("%d keys still parked after both records of the key were dropped, want 0", n)
				}
			})
		}
	}
}

// raiseMaxMessageBytes creates the stack's topic with a message size limit
// of n bytes (the broker's default is 1 MiB).
func raiseMaxMessageBytes(t *testing.T, s *stack, n int) {
	t.Helper()
	adm := kadm.NewClient(s.cl)
	v := fmt.Sprint(n)
	res, err := adm.CreateTopic(t.Context(), 1, 1, map[string]*string{"max.message.bytes": &v}, s.topic)
	if err == nil {
		err = res.Err
	}
	if err != nil {
		t.Fatalf("create topic %s with max.message.bytes %d: %v", s.topic, n, err)
	}
}
