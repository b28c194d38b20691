package heedtest

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed"
	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/cli"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// waitTimeout bounds how long Start waits for the server, and Await and
// AwaitAll for the applier.
const waitTimeout = 30 * time.Second

// Server is a domain running in-process as `heed dev` runs it: its Connect
// services (and heed's own) on a free port on 127.0.0.1, its applier, an
// in-process broker and a fresh database on the test's PostgreSQL server.
// Its methods are safe for concurrent use; those that take a testing.TB
// must be called from that test's goroutine.
type Server struct {
	// URL is the server's base URL (http://127.0.0.1:PORT), for the
	// domain's generated Connect clients:
	// pkgv1connect.NewXServiceClient(http.DefaultClient, s.URL).
	URL string
	// Brokers are the broker's addresses; Topic the domain's topic on it.
	Brokers []string
	Topic   string
	// DatabaseURL is the test's own database; Schema the domain's schema in
	// it.
	DatabaseURL string
	Schema      string
	// Pool reads the domain's projection (its search_path is Schema), for
	// a test's assertions. Writing through it bypasses heed.
	Pool *pgxpool.Pool

	pub *ingest.Publisher
}

// Start runs d as `heed dev` does, in-process, until the test ends: on a
// fresh database of the test's PostgreSQL server (see CheckReplay), an
// embedded broker and a server on free ports of 127.0.0.1, metrics off,
// logging warnings to the test's output. flags are more flags of heed dev
// (`heed help dev`), which win over Start's: "--partitions", "2", say.
// Start returns once the server serves; the applier is starting then (Await
// waits for it). A server that does not start fails tb; it is stopped in
// tb.Cleanup, and fails tb if it did not stop cleanly.
func Start(tb testing.TB, d *heed.Domain, flags ...string) *Server {
	tb.Helper()
	dbURL := testenv.PostgresURL(tb) // skips, or fails under CI=true, without a server
	logs := &lineWriter{w: tb.Output()}
	tb.Cleanup(logs.stop) // after the server stopped (cleanups run last first): its last words are kept
	banner := newBannerWriter()
	args := append([]string{"dev",
		"--database-url", dbURL,
		"--data-dir", tb.TempDir(),
		"--listen", "127.0.0.1:0",
		"--broker-listen", "127.0.0.1:0",
		"--metrics-listen", "",
		"--log-level", "warn",
		"--log-format", "text",
	}, flags...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() { done <- cli.Run(ctx, []*heed.Domain{d}, args, banner, logs) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				tb.Errorf("heedtest: heed dev of domain %s exited with %d on stopping (its log is above)", d.Name(), code)
			}
		case <-time.After(waitTimeout):
			tb.Errorf("heedtest: heed dev of domain %s did not stop within %v", d.Name(), waitTimeout)
		}
	})
	select {
	case <-banner.ready:
	case code := <-done:
		tb.Fatalf("heedtest: heed dev of domain %s exited with %d before it served (its log is above)", d.Name(), code)
	case <-time.After(waitTimeout):
		tb.Fatalf("heedtest: heed dev of domain %s did not serve within %v", d.Name(), waitTimeout)
	}
	s, err := banner.server()
	if err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	s.DatabaseURL = dbURL
	if s.Pool, err = schema.Connect(tb.Context(), dbURL, s.Schema, 4); err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	tb.Cleanup(s.Pool.Close)
	if s.pub, err = ingest.NewPublisher(ingest.Config{Brokers: s.Brokers, Topic: s.Topic, IDs: d.IDs(), Linger: -1}); err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	tb.Cleanup(s.pub.Close)
	return s
}

// Publish writes event to the domain's topic as the domain's services do
// (heed.Env.Publisher), keyed by key, its event ID derived from requestID,
// skipping the services' validation: for a test that drives the applier
// alone. It returns the consistency token Await takes. A write the broker
// does not acknowledge fails tb.
func (s *Server) Publish(tb testing.TB, key, requestID string, event proto.Message) (token string) {
	tb.Helper()
	_, token, err := s.pub.Publish(tb.Context(), key, requestID, event)
	if err != nil {
		tb.Fatalf("heedtest: publish %s %s: %v", key, requestID, err)
	}
	return token
}

// Await waits until the write that returned token (from Publish, or a
// command's response) is applied, so that reading Pool sees it. It fails tb
// after 30s.
func (s *Server) Await(tb testing.TB, token string) {
	tb.Helper()
	t, err := consistency.Parse(token)
	if err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	ctx, cancel := context.WithTimeout(tb.Context(), waitTimeout)
	defer cancel()
	if err := consistency.Wait(ctx, s.Pool, s.Topic, t); err != nil {
		tb.Fatalf("heedtest: await %s: %v", token, err)
	}
}

// AwaitAll waits until every record the topic holds now is applied: after
// commands whose tokens a test did not keep. It fails tb after 30s.
func (s *Server) AwaitAll(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), waitTimeout)
	defer cancel()
	ends, err := consistency.ListEndOffsets(ctx, s.pub.Client(), s.Topic)
	if err != nil {
		tb.Fatalf("heedtest: %v", err)
	}
	for {
		pos, err := applier.AppliedPositions(ctx, s.Pool, s.Topic)
		if err == nil {
			var behind []string
			for _, p := range slices.Sorted(maps.Keys(ends)) {
				if pos[p] < ends[p] {
					behind = append(behind, fmt.Sprintf("partition %d at %d of %d", p, pos[p], ends[p]))
				}
			}
			if len(behind) == 0 {
				return
			}
			err = fmt.Errorf("%s", strings.Join(behind, ", "))
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("heedtest: the applier did not apply the topic within %v: %v", waitTimeout, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// lineWriter writes to a test's output until stop: heed dev may log while
// it stops, after the test's last line.
type lineWriter struct {
	mu      sync.Mutex
	w       io.Writer
	stopped bool
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.stopped {
		return len(p), nil
	}
	return l.w.Write(p)
}

func (l *lineWriter) stop() {
	l.mu.Lock()
	l.stopped = true
	l.mu.Unlock()
}

// bannerWriter reads heed dev's banner (its stdout) and closes ready once
// the server line is there.
type bannerWriter struct {
	mu    sync.Mutex
	buf   strings.Builder
	once  sync.Once
	ready chan struct{}
}

func newBannerWriter() *bannerWriter { return &bannerWriter{ready: make(chan struct{})} }

// The banner's lines Start reads (see cli's dev verb).
const (
	brokerLine   = "  broker    "
	postgresLine = "  postgres  "
	serverLine   = "  server    "
)

func (b *bannerWriter) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if strings.Contains(b.buf.String(), serverLine) {
		b.once.Do(func() { close(b.ready) })
	}
	return len(p), nil
}

// server is what the banner says: the server's URL, the broker and topic,
// the schema.
func (b *bannerWriter) server() (*Server, error) {
	b.mu.Lock()
	text := b.buf.String()
	b.mu.Unlock()
	s := &Server{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, brokerLine): // "  broker    ADDR (embedded, data in DIR), topic TOPIC"
			f := strings.Fields(line)
			if len(f) >= 2 {
				s.Brokers = []string{f[1]}
			}
			if i := strings.LastIndex(line, ", topic "); i >= 0 {
				s.Topic = line[i+len(", topic "):]
			}
		case strings.HasPrefix(line, postgresLine): // "  postgres  SOURCE, schema SCHEMA"
			if i := strings.LastIndex(line, ", schema "); i >= 0 {
				s.Schema = line[i+len(", schema "):]
			}
		case strings.HasPrefix(line, serverLine): // "  server    http://ADDR (Connect, ...)"
			if f := strings.Fields(line); len(f) >= 2 {
				s.URL = f[1]
			}
		}
	}
	if len(s.Brokers) == 0 || s.Topic == "" || s.Schema == "" || s.URL == "" {
		return nil, fmt.Errorf("cannot read heed dev's banner (broker %v, topic %q, schema %q, URL %q):\n%s", s.Brokers, s.Topic, s.Schema, s.URL, text)
	}
	return s, nil
}
