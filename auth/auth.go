// Package auth checks bearer tokens on RPCs against a file of their SHA-256
// hashes, so that the file holds no secret, and reloads the file when it
// changes. NewToken makes a token and its line.
package auth

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
)

// TokenPrefix starts every token NewToken makes, so that a leaked one is
// recognisable (and secret scanners can find it).
const TokenPrefix = "heed_"

// NewToken returns a fresh random token (256 bits) and the line that admits
// it in a tokens file: its SHA-256 in hex, then name (may be empty).
func NewToken(name string) (token, line string, err error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", "", err
	}
	token = TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	sum := sha256.Sum256([]byte(token))
	line = hex.EncodeToString(sum[:])
	if name = strings.TrimSpace(name); name != "" {
		line += " " + strings.Join(strings.Fields(name), "-")
	}
	return token, line, nil
}

// entry is one admitted token: its hash and the name the file gives it.
type entry struct {
	sum  [sha256.Size]byte
	name string
}

// Tokens is the set of admitted tokens, read from a file: one SHA-256 (hex)
// per line, optionally followed by a name; blank lines and lines starting
// with # are ignored. Watch reloads it when it changes.
type Tokens struct {
	path string
	log  *slog.Logger

	mu      sync.RWMutex
	entries []entry
	stamp   fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads the tokens file at path. An unreadable file, a malformed line
// or a file admitting no token is an error that names the line.
func Load(path string, logger *slog.Logger) (*Tokens, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := &Tokens{path: path, log: logger}
	if err := t.reload(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *Tokens) reload() error {
	fi, err := os.Stat(t.path)
	if err != nil {
		return fmt.Errorf("auth tokens file: %w (create it with lines from `heed token new`)", err)
	}
	data, err := os.ReadFile(t.path)
	if err != nil {
		return fmt.Errorf("auth tokens file: %w", err)
	}
	stamp := fileStamp{mod: fi.ModTime(), size: fi.Size()}
	entries, err := parse(t.path, data)
	if err != nil {
		return err
	}
	t.mu.Lock()
	t.entries, t.stamp = entries, stamp
	t.mu.Unlock()
	return nil
}

func parse(path string, data []byte) ([]entry, error) {
	var out []entry
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		raw, err := hex.DecodeString(fields[0])
		if err != nil || len(raw) != sha256.Size {
			if strings.HasPrefix(fields[0], TokenPrefix) {
				return nil, fmt.Errorf("%s line %d: a token itself, not its hash: the file must hold only hashes (the line `heed token new` prints); remove it and treat the token as leaked", path, n)
			}
			return nil, fmt.Errorf("%s line %d: want a SHA-256 in hex (64 characters) and an optional name, as `heed token new` prints", path, n)
		}
		e := entry{name: strings.Join(fields[1:], " ")}
		copy(e.sum[:], raw)
		out = append(out, e)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s admits no token: add a line from `heed token new`", path)
	}
	return out, nil
}

// Len is how many tokens are admitted.
func (t *Tokens) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.entries)
}

// Check reports whether token is admitted, and its name. It compares the
// token's hash with every admitted one in constant time.
func (t *Tokens) Check(token string) (string, bool) {
	sum := sha256.Sum256([]byte(token))
	t.mu.RLock()
	defer t.mu.RUnlock()
	found, name := 0, ""
	for _, e := range t.entries {
		if subtle.ConstantTimeCompare(sum[:], e.sum[:]) == 1 {
			found, name = 1, e.name
		}
	}
	return name, found == 1
}

// Watch reloads the file every interval when it changed, until ctx ends. A
// file that became unreadable or malformed keeps the tokens admitted before
// (logged as an error).
func (t *Tokens) Watch(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		fi, err := os.Stat(t.path)
		if err == nil {
			t.mu.RLock()
			same := fi.ModTime().Equal(t.stamp.mod) && fi.Size() == t.stamp.size
			t.mu.RUnlock()
			if same {
				continue
			}
			err = t.reload()
		}
		if err != nil {
			t.log.Error("auth tokens file not reloaded; the tokens admitted before still are", "path", t.path, "err", err)
			continue
		}
		t.log.Info("auth tokens file reloaded", "path", t.path, "admitted", t.Len())
	}
}

// ErrUnauthenticated is the cause of the unauthenticated errors Guard
// answers.
var ErrUnauthenticated = errors.New("missing or unknown bearer token: send `Authorization: Bearer <token>` with a token whose hash is in the server's --auth-tokens-file")

// Guard wraps h (the RPC handlers): a request without an admitted bearer
// token is answered unauthenticated, in the protocol it used (Connect, gRPC,
// gRPC-Web), and never reaches h. refused, if set, is told of each refusal
// with the request's path (the procedure), for metrics.
func Guard(t *Tokens, logger *slog.Logger, refused func(procedure string)) func(http.Handler) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ew := connect.NewErrorWriter()
	return func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			token, ok := bearer(r.Header.Get("Authorization"))
			if ok {
				_, ok = t.Check(token)
			}
			if !ok {
				logger.Debug("request refused: unauthenticated", "procedure", r.URL.Path, "remote", r.RemoteAddr)
				if refused != nil {
					refused(r.URL.Path)
				}
				_ = ew.Write(w, r, connect.NewError(connect.CodeUnauthenticated, ErrUnauthenticated))
				return
			}
			h.ServeHTTP(w, r)
		})
	}
}

func bearer(h string) (string, bool) {
	const prefix = "Bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		return "", false
	}
	return strings.TrimSpace(h[len(prefix):]), true
}
