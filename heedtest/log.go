package heedtest

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/heed-dev/heed/internal/testenv"
)

// logger is the log of CheckReplay's appliers and rebuilds, on the test's
// output: errors only, unless HEED_TEST_LOG sets a level (warn shows each
// record quarantined, which a stream with junk or conflicts means to do).
// Warnings are kept in last either way, for the message of a run that did
// not complete.
func logger(tb testing.TB, last *lastWarning) *slog.Logger {
	tb.Helper()
	l := testenv.Logger(tb)
	level := slog.LevelError
	if os.Getenv(testenv.LogLevelEnv) != "" {
		level = math.MinInt // the test logger's own level decides
	}
	return slog.New(quiet{inner: l.Handler(), level: level, last: last})
}

// lastWarning is the last warning (or error) logged.
type lastWarning struct {
	mu   sync.Mutex
	text string
}

func (w *lastWarning) set(s string) {
	w.mu.Lock()
	w.text = s
	w.mu.Unlock()
}

func (w *lastWarning) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.text
}

// quiet passes records from level up to inner, and keeps the last warning.
type quiet struct {
	inner slog.Handler
	level slog.Level
	last  *lastWarning
	attrs []slog.Attr
}

func (q quiet) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelWarn || (l >= q.level && q.inner.Enabled(ctx, l))
}

func (q quiet) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		var b strings.Builder
		b.WriteString(r.Message)
		for _, a := range q.attrs {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		}
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		q.last.set(b.String())
	}
	if r.Level >= q.level && q.inner.Enabled(ctx, r.Level) {
		return q.inner.Handle(ctx, r)
	}
	return nil
}

func (q quiet) WithAttrs(attrs []slog.Attr) slog.Handler {
	return quiet{inner: q.inner.WithAttrs(attrs), level: q.level, last: q.last, attrs: append(append([]slog.Attr{}, q.attrs...), attrs...)}
}

func (q quiet) WithGroup(name string) slog.Handler {
	return quiet{inner: q.inner.WithGroup(name), level: q.level, last: q.last, attrs: q.attrs}
}
