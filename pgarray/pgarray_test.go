package pgarray_test

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/pgarray"
)

// columns is one value of each slice type, and what Postgres must read back.
type columns struct {
	name  string
	uuids pgarray.UUIDs
	texts pgarray.Texts
	int8s pgarray.Int8s
	int2s pgarray.Int2s
}

func (c columns) args() []any { return []any{c.uuids, c.texts, c.int8s, c.int2s} }

var cases = []columns{
	{
		name:  "values",
		uuids: pgarray.UUIDs{uuid.Must(uuid.NewV7()), uuid.New(), uuid.Nil},
		texts: pgarray.Texts{"acct-1", "", "çà 日本 🙂", `quote " comma , brace } backslash \`},
		int8s: pgarray.Int8s{0, 1, -1, math.MaxInt64, math.MinInt64},
		int2s: pgarray.Int2s{0, 2, -3, math.MaxInt16, math.MinInt16},
	},
	{name: "empty", uuids: pgarray.UUIDs{}, texts: pgarray.Texts{}, int8s: pgarray.Int8s{}, int2s: pgarray.Int2s{}},
	{name: "null"},
}

// TestRoundTrip sends each case as parameters, on a connection whose type map
// is registered and on one whose is not, and checks what Postgres read.
func TestRoundTrip(t *testing.T) {
	ctx := t.Context()
	url := testenv.PostgresURL(t)
	for _, register := range []bool{true, false} {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(ctx) })
		if register {
			pgarray.Register(conn.TypeMap())
			pgarray.Register(conn.TypeMap()) // a second call changes nothing
		}
		if got := pgarray.Registered(conn.TypeMap()); got != register {
			t.Fatalf("Registered = %v after registering: %v", got, register)
		}
		for _, c := range cases {
			t.Run(fmt.Sprintf("%s/registered=%v", c.name, register), func(t *testing.T) {
				var (
					uuids [][16]byte
					texts []string
					int8s []int64
					int2s []int16
					nulls []bool
					dims  []string
				)
				// Postgres's own view: NULL or not, and the array's dimensions.
				err := conn.QueryRow(ctx, `SELECT $1::uuid[], $2::text[], $3::int8[], $4::int2[],
ARRAY[$1::uuid[] IS NULL, $2::text[] IS NULL, $3::int8[] IS NULL, $4::int2[] IS NULL],
ARRAY[coalesce(array_dims($1::uuid[]), ''), coalesce(array_dims($2::text[]), ''), coalesce(array_dims($3::int8[]), ''), coalesce(array_dims($4::int2[]), '')]`,
					c.args()...).Scan(&uuids, &texts, &int8s, &int2s, &nulls, &dims)
				if err != nil {
					t.Fatal(err)
				}
				null := c.uuids == nil
				if !slices.Equal(nulls, []bool{null, null, null, null}) {
					t.Errorf("IS NULL = %v, want all %v", nulls, null)
				}
				want := func(n int) string {
					if n == 0 {
						return "" // array_dims of '{}' and of NULL is NULL
					}
					return fmt.Sprintf("[1:%d]", n)
				}
				if wantDims := []string{want(len(c.uuids)), want(len(c.texts)), want(len(c.int8s)), want(len(c.int2s))}; !slices.Equal(dims, wantDims) {
					t.Errorf("array_dims = %q, want %q", dims, wantDims)
				}
				if !slices.Equal(uuids, [][16]byte(c.uuids)) || !slices.Equal(texts, []string(c.texts)) ||
					!slices.Equal(int8s, []int64(c.int8s)) || !slices.Equal(int2s, []int16(c.int2s)) {
					t.Errorf("read back %v %q %v %v, want %v %q %v %v", uuids, texts, int8s, int2s, c.uuids, c.texts, c.int8s, c.int2s)
				}
			})
		}
	}
}

// TestEncodeSameBytes checks, without a database, that a registered map writes
// exactly the bytes pgx's own encoding writes for a non-empty array, in one
// pass: a couple of allocations however long the array, where pgx's path
// allocates per element.
func TestEncodeSameBytes(t *testing.T) {
	fast, slow := pgtype.NewMap(), pgtype.NewMap()
	pgarray.Register(fast)
	c := cases[0]
	long := make(pgarray.Texts, 1000)
	for i := range long {
		long[i] = fmt.Sprintf("account-%d", i)
	}
	for i, p := range []struct {
		oid   uint32
		value any
	}{
		{pgtype.UUIDArrayOID, c.uuids},
		{pgtype.TextArrayOID, c.texts},
		{pgtype.Int8ArrayOID, c.int8s},
		{pgtype.Int2ArrayOID, c.int2s},
		{pgtype.TextArrayOID, long},
	} {
		got, err := fast.Encode(p.oid, pgtype.BinaryFormatCode, p.value, nil)
		if err != nil {
			t.Fatal(err)
		}
		want, err := slow.Encode(p.oid, pgtype.BinaryFormatCode, p.value, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("param %d (%T): registered map wrote\n%x\npgx wrote\n%x", i, p.value, got, want)
		}
	}
	allocs := func(m *pgtype.Map, texts pgarray.Texts) float64 {
		buf := make([]byte, 0, 256)
		return testing.AllocsPerRun(20, func() {
			if _, err := m.Encode(pgtype.TextArrayOID, pgtype.BinaryFormatCode, texts, buf[:0]); err != nil {
				t.Fatal(err)
			}
		})
	}
	longer := append(slices.Clone(long), long...)
	// The count depends on the build (-race adds some), not on the length.
	if a, b := allocs(fast, long), allocs(fast, longer); a != b || a > 4 {
		t.Errorf("registered map: %.0f allocations to encode %d texts, %.0f for %d; want the same few (one pass into a buffer grown once)", a, len(long), b, len(longer))
	}
	if a := allocs(slow, long); a < float64(len(long)) {
		t.Errorf("pgx's own path: %.0f allocations for %d texts; this test assumes it allocates per element, so it no longer shows the registered path is taken", a, len(long))
	}
}

// TestOtherValuesKeepPgxEncoding checks that a registered map still encodes
// what is not one of this package's slices, and a slice given for a column of
// another type, the way pgx does.
func TestOtherValuesKeepPgxEncoding(t *testing.T) {
	fast, slow := pgtype.NewMap(), pgtype.NewMap()
	pgarray.Register(fast)
	for _, p := range []struct {
		oid   uint32
		value any
	}{
		{pgtype.TextArrayOID, []string{"a", "b"}},
		{pgtype.Int8ArrayOID, []int64{1, 2}},
		{pgtype.Int8ArrayOID, pgarray.Int2s{1, 2}}, // int2 values for an int8[] column: pgx converts
		{pgtype.UUIDArrayOID, []uuid.UUID{uuid.New()}},
	} {
		got, err := fast.Encode(p.oid, pgtype.BinaryFormatCode, p.value, nil)
		if err != nil {
			t.Fatalf("%T: %v", p.value, err)
		}
		want, err := slow.Encode(p.oid, pgtype.BinaryFormatCode, p.value, nil)
		if err != nil {
			t.Fatalf("%T: %v", p.value, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%T for oid %d: registered map wrote %x, pgx wrote %x", p.value, p.oid, got, want)
		}
	}
}

// BenchmarkEncode encodes one batch's worth of columns (4,000 rows of a uuid,
// two texts and an int8) the way pgx builds a statement's parameters, with and
// without Register.
//
//	go test -run '^$' -bench Encode ./pgarray/
func BenchmarkEncode(b *testing.B) {
	const n = 4000
	ids := make(pgarray.UUIDs, n)
	reqs := make(pgarray.Texts, n)
	accts := make(pgarray.Texts, n)
	amounts := make(pgarray.Int8s, n)
	for i := range n {
		ids[i] = uuid.Must(uuid.NewV7())
		reqs[i] = uuid.NewString()
		accts[i] = fmt.Sprintf("acct-%05d", i%10000)
		amounts[i] = int64(i)
	}
	for _, register := range []bool{false, true} {
		b.Run(fmt.Sprintf("registered=%v", register), func(b *testing.B) {
			m := pgtype.NewMap()
			if register {
				pgarray.Register(m)
			}
			var buf []byte
			b.ReportAllocs()
			for b.Loop() {
				buf = buf[:0]
				for _, p := range []struct {
					oid uint32
					v   any
				}{{pgtype.UUIDArrayOID, ids}, {pgtype.TextArrayOID, reqs}, {pgtype.TextArrayOID, accts}, {pgtype.Int8ArrayOID, amounts}} {
					var err error
					if buf, err = m.Encode(p.oid, pgtype.BinaryFormatCode, p.v, buf); err != nil {
						b.Fatal(err)
					}
				}
				buf = nil // as pgx does: each statement starts from a small buffer
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/row")
		})
	}
}
