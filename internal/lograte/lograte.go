// Package lograte bounds how often a retry loop logs: the first line of a
// kind goes out at once, then at most one per interval, and the line that
// goes out says how many were held back since the last one. A loop that
// fails the same way for hours thus writes a few lines a minute, not one per
// attempt.
package lograte

import (
	"log/slog"
	"sync"
	"time"
)

// Limiter lets log lines through at a bounded rate, per kind (any string
// the caller picks: the message, say). Create it with New. Its methods are
// safe for concurrent use.
type Limiter struct {
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	kinds map[string]*kind
}

type kind struct {
	last time.Time
	held int
}

// New returns a Limiter that lets through one line of each kind per every.
func New(every time.Duration) *Limiter {
	return &Limiter{every: every, now: time.Now, kinds: make(map[string]*kind)}
}

// Allow reports whether a line of kind k may go out now and, if so, how many
// lines of that kind were held back since the last that went out. A line
// held back is counted.
func (l *Limiter) Allow(k string) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	st := l.kinds[k]
	if st == nil {
		st = &kind{}
		l.kinds[k] = st
	} else if now.Sub(st.last) < l.every {
		st.held++
		return false, 0
	}
	held, st.held, st.last = st.held, 0, now
	return true, held
}

// Log logs msg with args through log (a *slog.Logger's Warn, Error, ...)
// if a line of kind msg may go out now, adding "suppressed" with the count
// of lines held back since the last one when there were any.
func (l *Limiter) Log(log func(msg string, args ...any), msg string, args ...any) {
	ok, held := l.Allow(msg)
	if !ok {
		return
	}
	if held > 0 {
		args = append(args[:len(args):len(args)], slog.Int("suppressed", held))
	}
	log(msg, args...)
}
