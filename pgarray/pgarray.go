// Package pgarray encodes Go slices as Postgres array parameters (uuid[],
// text[], int8[], int2[]) in one pass into a buffer sized up front.
//
// A bulk statement such as INSERT … SELECT * FROM unnest($1::uuid[], …) takes
// its rows as array parameters. pgx encodes an array element by element through
// an interface, boxing each element, and grows its buffer as it goes: about
// 150 ns per element, several times what writing the bytes costs, which an
// applier draining tens of thousands of events a second pays on every column of
// every row (BenchmarkEncode). The slice types of this package write the
// binary array format directly once Register has been called on the
// connection's type map. Without Register they are ordinary arrays to pgx and
// encode its usual way, with the same result.
package pgarray

import (
	"encoding/binary"
	"slices"

	"github.com/jackc/pgx/v5/pgtype"
)

// UUIDs is a uuid[] parameter. A nil UUIDs is NULL; an empty one is '{}'.
type UUIDs [][16]byte

// Texts is a text[] parameter. A nil Texts is NULL; an empty one is '{}'. Like
// any text parameter, its strings must be valid in the database's encoding and
// hold no NUL byte: Postgres rejects the statement otherwise.
type Texts []string

// Int8s is an int8[] parameter. A nil Int8s is NULL; an empty one is '{}'.
type Int8s []int64

// Int2s is an int2[] parameter. A nil Int2s is NULL; an empty one is '{}'.
type Int2s []int16

// array is what the one-pass encode plan needs from a slice type.
type array interface {
	pgtype.ArrayGetter
	elementOID() uint32
	// appendBinary appends the array, not NULL, in the binary format.
	appendBinary(buf []byte) []byte
	isNil() bool
}

var (
	_ array = UUIDs(nil)
	_ array = Texts(nil)
	_ array = Int8s(nil)
	_ array = Int2s(nil)
)

// Register makes m encode UUIDs, Texts, Int8s and Int2s in one pass when they
// are the parameter of a column of their own type in binary format; every
// other value keeps pgx's encoding. It wraps the codecs of uuid[], text[],
// int8[] and int2[] and is a no-op for a map it has already registered, so it
// can be called on every connection as it is acquired:
//
//	pgarray.Register(conn.Conn().TypeMap())
//
// or once per connection from pgxpool.Config.AfterConnect.
//
// The wrapped codecs decode as before. One pgx path looks for its own array
// codec by type: CopyFrom given a string for a column of one of these array
// types then parses it without keeping its dimensions, which only a
// multidimensional array literal notices.
func Register(m *pgtype.Map) {
	for _, oid := range []uint32{pgtype.UUIDArrayOID, pgtype.TextArrayOID, pgtype.Int8ArrayOID, pgtype.Int2ArrayOID} {
		t, ok := m.TypeForOID(oid)
		if !ok {
			continue
		}
		if _, done := t.Codec.(*codec); done {
			continue
		}
		ac, ok := t.Codec.(*pgtype.ArrayCodec)
		if !ok || ac.ElementType == nil {
			continue // someone else's codec: leave it alone
		}
		m.RegisterType(&pgtype.Type{Name: t.Name, OID: t.OID, Codec: &codec{Codec: t.Codec, elem: ac.ElementType.OID}})
	}
}

// Registered reports whether Register has wrapped every codec it wraps in m.
func Registered(m *pgtype.Map) bool {
	for _, oid := range []uint32{pgtype.UUIDArrayOID, pgtype.TextArrayOID, pgtype.Int8ArrayOID, pgtype.Int2ArrayOID} {
		t, ok := m.TypeForOID(oid)
		if !ok {
			return false
		}
		if _, ok := t.Codec.(*codec); !ok {
			return false
		}
	}
	return true
}

// codec is an array codec that encodes this package's slices of its element
// type itself and hands everything else to the codec it wraps.
type codec struct {
	pgtype.Codec
	elem uint32
}

func (c *codec) PlanEncode(m *pgtype.Map, oid uint32, format int16, value any) pgtype.EncodePlan {
	if a, ok := value.(array); ok && format == pgtype.BinaryFormatCode && a.elementOID() == c.elem {
		return plan{}
	}
	return c.Codec.PlanEncode(m, oid, format, value)
}

type plan struct{}

func (plan) Encode(value any, buf []byte) ([]byte, error) {
	a := value.(array)
	if a.isNil() {
		return nil, nil // NULL
	}
	return a.appendBinary(buf), nil
}

// header grows buf by the array's whole size, then appends the binary array
// header for n elements of type oid whose encodings, length words included,
// take body bytes.
func header(buf []byte, n int, oid uint32, body int) []byte {
	if n == 0 {
		buf = slices.Grow(buf, 12)
		buf = binary.BigEndian.AppendUint32(buf, 0) // no dimensions: '{}'
		buf = binary.BigEndian.AppendUint32(buf, 0) // no NULLs
		return binary.BigEndian.AppendUint32(buf, oid)
	}
	buf = slices.Grow(buf, 20+body)
	buf = binary.BigEndian.AppendUint32(buf, 1) // one dimension
	buf = binary.BigEndian.AppendUint32(buf, 0) // no NULLs
	buf = binary.BigEndian.AppendUint32(buf, oid)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	return binary.BigEndian.AppendUint32(buf, 1) // lower bound
}

// appendFixed appends the array a of oid elements, each put as width bytes.
func appendFixed[T any](buf []byte, a []T, oid uint32, width int, put func([]byte, T) []byte) []byte {
	buf = header(buf, len(a), oid, len(a)*(4+width))
	for _, v := range a {
		buf = binary.BigEndian.AppendUint32(buf, uint32(width))
		buf = put(buf, v)
	}
	return buf
}

func (a UUIDs) appendBinary(buf []byte) []byte {
	return appendFixed(buf, a, pgtype.UUIDOID, 16, func(b []byte, v [16]byte) []byte { return append(b, v[:]...) })
}

func (a Texts) appendBinary(buf []byte) []byte {
	body := 4 * len(a)
	for _, s := range a {
		body += len(s)
	}
	buf = header(buf, len(a), pgtype.TextOID, body)
	for _, s := range a {
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(s)))
		buf = append(buf, s...)
	}
	return buf
}

func (a Int8s) appendBinary(buf []byte) []byte {
	return appendFixed(buf, a, pgtype.Int8OID, 8, func(b []byte, v int64) []byte { return binary.BigEndian.AppendUint64(b, uint64(v)) })
}

func (a Int2s) appendBinary(buf []byte) []byte {
	return appendFixed(buf, a, pgtype.Int2OID, 2, func(b []byte, v int16) []byte { return binary.BigEndian.AppendUint16(b, uint16(v)) })
}

func (UUIDs) elementOID() uint32 { return pgtype.UUIDOID }
func (Texts) elementOID() uint32 { return pgtype.TextOID }
func (Int8s) elementOID() uint32 { return pgtype.Int8OID }
func (Int2s) elementOID() uint32 { return pgtype.Int2OID }

func (a UUIDs) isNil() bool { return a == nil }
func (a Texts) isNil() bool { return a == nil }
func (a Int8s) isNil() bool { return a == nil }
func (a Int2s) isNil() bool { return a == nil }

// The pgtype.ArrayGetter methods below are pgx's generic path, taken when the
// map was not registered or the parameter is not of the slice's own type.

// Dimensions implements pgtype.ArrayGetter.
func (a UUIDs) Dimensions() []pgtype.ArrayDimension { return dimensions(len(a), a == nil) }

// Index implements pgtype.ArrayGetter.
func (a UUIDs) Index(i int) any { return a[i] }

// IndexType implements pgtype.ArrayGetter.
func (UUIDs) IndexType() any { return [16]byte{} }

// Dimensions implements pgtype.ArrayGetter.
func (a Texts) Dimensions() []pgtype.ArrayDimension { return dimensions(len(a), a == nil) }

// Index implements pgtype.ArrayGetter.
func (a Texts) Index(i int) any { return a[i] }

// IndexType implements pgtype.ArrayGetter.
func (Texts) IndexType() any { return "" }

// Dimensions implements pgtype.ArrayGetter.
func (a Int8s) Dimensions() []pgtype.ArrayDimension { return dimensions(len(a), a == nil) }

// Index implements pgtype.ArrayGetter.
func (a Int8s) Index(i int) any { return a[i] }

// IndexType implements pgtype.ArrayGetter.
func (Int8s) IndexType() any { return int64(0) }

// Dimensions implements pgtype.ArrayGetter.
func (a Int2s) Dimensions() []pgtype.ArrayDimension { return dimensions(len(a), a == nil) }

// Index implements pgtype.ArrayGetter.
func (a Int2s) Index(i int) any { return a[i] }

// IndexType implements pgtype.ArrayGetter.
func (Int2s) IndexType() any { return int16(0) }

// dimensions is what pgx's own slice arrays report: none for NULL, one of n
// elements otherwise.
func dimensions(n int, null bool) []pgtype.ArrayDimension {
	if null {
		return nil
	}
	return []pgtype.ArrayDimension{{Length: int32(n), LowerBound: 1}}
}
