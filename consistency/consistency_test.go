package consistency_test

import (
	"encoding/base64"
	"errors"
	"math"
	"testing"

	"github.com/heed-dev/heed/consistency"
)

func TestTokenRoundTrip(t *testing.T) {
	for _, tok := range []consistency.Token{
		{},
		{Partition: 0, Offset: 1},
		{Partition: 7, Offset: 123456},
		{Partition: math.MaxInt32, Offset: math.MaxInt64},
	} {
		s := tok.String()
		got, err := consistency.Parse(s)
		if err != nil {
			t.Errorf("Parse(%q) of %+v: %v", s, tok, err)
			continue
		}
		if got != tok {
			t.Errorf("Parse(String(%+v)) = %+v", tok, got)
		}
		if enc := base64.RawURLEncoding.EncodeToString([]byte{}); s == enc {
			t.Errorf("String(%+v) is empty", tok)
		}
	}
}

func TestParseMalformed(t *testing.T) {
	b64 := base64.RawURLEncoding.EncodeToString
	valid := consistency.Token{Partition: 3, Offset: 300}.String() // 4 bytes: padded base64 differs
	raw, _ := base64.RawURLEncoding.DecodeString(valid)
	cases := map[string]string{
		"empty":               "",
		"not base64":          "!!!",
		"padded base64":       base64.URLEncoding.EncodeToString(raw),
		"too short":           b64([]byte{1, 0}),
		"unknown version":     b64(append([]byte{2}, raw[1:]...)),
		"trailing bytes":      b64(append(append([]byte{}, raw...), 0)),
		"truncated offset":    b64([]byte{1, 3, 0x80}),
		"partition too large": b64([]byte{1, 0x80, 0x80, 0x80, 0x80, 0x08, 0}),                               // 1<<31
		"offset too large":    b64([]byte{1, 0, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01}), // 1<<63
		"varint overflow":     b64([]byte{1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0}),
	}
	for name, s := range cases {
		t.Run(name, func(t *testing.T) {
			tok, err := consistency.Parse(s)
			if !errors.Is(err, consistency.ErrMalformed) {
				t.Fatalf("Parse(%q) = %+v, %v; want an error wrapping ErrMalformed", s, tok, err)
			}
		})
	}
}
