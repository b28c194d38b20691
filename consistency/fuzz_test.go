package consistency_test

import (
	"encoding/base64"
	"errors"
	"math"
	"testing"

	"github.com/heed-dev/heed/consistency"
)

// FuzzParse: Parse never panics; it refuses with an error wrapping
// ErrMalformed, or returns a token within int32/int64 range that String and
// Parse give back unchanged.
func FuzzParse(f *testing.F) {
	b64 := base64.RawURLEncoding.EncodeToString
	for _, s := range []string{
		"", "!!!", "AQUA", "AQUB", consistency.Token{Partition: 7, Offset: 123456}.String(),
		consistency.Token{Partition: math.MaxInt32, Offset: math.MaxInt64}.String(),
		b64([]byte{1, 0}), b64([]byte{2, 0, 0}), b64([]byte{1, 3, 0x80}), b64([]byte{1, 0x80, 0, 0}),
		b64([]byte{1, 0x80, 0x80, 0x80, 0x80, 0x08, 0}),
		b64([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0}),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := consistency.Parse(s)
		if err != nil {
			if !errors.Is(err, consistency.ErrMalformed) {
				t.Fatalf("Parse(%q) error %v does not wrap ErrMalformed", s, err)
			}
			return
		}
		if tok.Partition < 0 || tok.Offset < 0 {
			t.Fatalf("Parse(%q) = %+v: negative", s, tok)
		}
		again, err := consistency.Parse(tok.String())
		if err != nil || again != tok {
			t.Fatalf("Parse(%q) = %+v, but Parse(%q) = %+v, %v", s, tok, tok.String(), again, err)
		}
	})
}

// FuzzTokenRoundTrip: Parse(t.String()) == t for every token a write can
// return (partition and offset not negative); any other token's string is
// refused as malformed, never read as another token.
func FuzzTokenRoundTrip(f *testing.F) {
	f.Add(int32(0), int64(0))
	f.Add(int32(5), int64(4))
	f.Add(int32(math.MaxInt32), int64(math.MaxInt64))
	f.Add(int32(-1), int64(0))
	f.Add(int32(0), int64(-1))
	f.Add(int32(math.MinInt32), int64(math.MinInt64))
	f.Fuzz(func(t *testing.T, partition int32, offset int64) {
		tok := consistency.Token{Partition: partition, Offset: offset}
		got, err := consistency.Parse(tok.String())
		if partition >= 0 && offset >= 0 {
			if err != nil || got != tok {
				t.Fatalf("Parse(%q) of %+v = %+v, %v", tok.String(), tok, got, err)
			}
			return
		}
		if !errors.Is(err, consistency.ErrMalformed) {
			t.Fatalf("Parse(%q) of %+v = %+v, %v; want ErrMalformed", tok.String(), tok, got, err)
		}
	})
}
