package devstack

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"syscall"
)

// orDiscard returns l, or a logger that drops everything when l is nil.
func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}

// freePort asks the kernel for a currently unused TCP port on 127.0.0.1.
// The port is released before returning, so another process may take it
// before the caller binds it; callers tolerate that race (dev and tests).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free TCP port on 127.0.0.1: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// portFree reports whether port can be bound on 127.0.0.1 right now.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// isAddrInUse reports whether err is "address already in use".
func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE)
}

// tailFile returns up to the last n bytes of the file at path, trimmed, or
// "" when it cannot be read.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimSpace(string(b))
}

// msgError is an error with a fixed, user-facing message that still
// unwraps to a cause (for errors.Is).
type msgError struct {
	msg   string
	cause error
}

func (e *msgError) Error() string { return e.msg }
func (e *msgError) Unwrap() error { return e.cause }
