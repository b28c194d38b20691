package shell

import "testing"

func TestWord(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/cert.pem":    "/tmp/cert.pem",
		"a b":              "'a b'",
		"it's":             `'it'\''s'`,
		"":                 "''",
		"postgres://u@h/d": "postgres://u@h/d",
	} {
		if got := Word(in); got != want {
			t.Errorf("Word(%q) = %s, want %s", in, got, want)
		}
	}
}
