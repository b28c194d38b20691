// Package shell quotes words for a POSIX shell, for the commands heed prints
// for a user to paste and the options pg_ctl passes through /bin/sh.
package shell

import (
	"regexp"
	"strings"
)

// Quote quotes s for a POSIX shell, always.
func Quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

var plainWord = regexp.MustCompile(`^[A-Za-z0-9_./:@%+=-]+$`)

// Word quotes s for a POSIX shell unless it needs no quotes.
func Word(s string) string {
	if plainWord.MatchString(s) {
		return s
	}
	return Quote(s)
}
