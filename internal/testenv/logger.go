package testenv

import (
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
)

// LogLevelEnv names the environment variable setting the level of Logger
// (debug, info, warn, error); the default is warn.
const LogLevelEnv = "HEED_TEST_LOG"

// Logger returns a logger writing to the test's output (tb.Output) at the
// level in $HEED_TEST_LOG (default warn). Lines logged after the test's
// cleanups have run are dropped instead of panicking, so background
// goroutines may keep the logger.
func Logger(tb testing.TB) *slog.Logger {
	tb.Helper()
	var level slog.Level
	if err := level.UnmarshalText([]byte(strings.TrimSpace(os.Getenv(LogLevelEnv)))); err != nil {
		level = slog.LevelWarn
	}
	w := &tbWriter{w: tb.Output()}
	tb.Cleanup(w.stop)
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// tbWriter forwards to a test's output until stop.
type tbWriter struct {
	mu      sync.Mutex
	w       io.Writer
	stopped bool
}

func (t *tbWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return len(p), nil
	}
	return t.w.Write(p)
}

func (t *tbWriter) stop() {
	t.mu.Lock()
	t.stopped = true
	t.mu.Unlock()
}
