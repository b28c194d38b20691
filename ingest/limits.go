package ingest

import (
	"compress/gzip"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"
)

// Defaults of what one request may cost a Server.
const (
	// DefaultMaxRequestBytes is the largest request message a Server accepts,
	// counted after decompression. A command is a few hundred bytes.
	DefaultMaxRequestBytes = 1 << 20
	// DefaultReadTimeout bounds reading one request, headers and body (per
	// stream over HTTP/2), so that a client sending a body slowly cannot hold a
	// connection and its buffers for long.
	DefaultReadTimeout = 30 * time.Second
	// DefaultIdleTimeout closes a keep-alive connection with no request for this
	// long.
	DefaultIdleTimeout = 2 * time.Minute
	// DefaultShutdownTimeout is how long Serve lets in-flight requests finish
	// once its context ends.
	DefaultShutdownTimeout = 10 * time.Second
)

// ServerOption changes a limit of a Server from its default.
type ServerOption func(*Server)

// WithMaxRequestBytes sets the largest request message the Server's handlers
// accept, counted after decompression (default DefaultMaxRequestBytes; n < 1
// keeps the default). A larger one is refused with resource_exhausted before it
// is inflated or read further: see Server.HandlerOptions.
func WithMaxRequestBytes(n int) ServerOption {
	return func(s *Server) {
		if n > 0 {
			s.maxRequestBytes = n
		}
	}
}

// WithTimeouts sets how long the Server waits for a request to be read (headers
// and body; per stream over HTTP/2) and how long it keeps an idle connection
// open (defaults DefaultReadTimeout and DefaultIdleTimeout; a value < 1 keeps
// the default).
func WithTimeouts(read, idle time.Duration) ServerOption {
	return func(s *Server) {
		if read > 0 {
			s.readTimeout = read
		}
		if idle > 0 {
			s.idleTimeout = idle
		}
	}
}

// WithShutdownTimeout sets how long Serve lets in-flight requests finish once
// its context ends, before it closes their connections (default
// DefaultShutdownTimeout; d < 1 keeps it).
func WithShutdownTimeout(d time.Duration) ServerOption {
	return func(s *Server) {
		if d > 0 {
			s.shutdownTimeout = d
		}
	}
}

// requestLimits returns the handler options that refuse a request message over
// maxBytes after decompression with resource_exhausted. connect-go checks the
// decompressed size itself, but then inflates the rest of the body to report
// its size: a 1 MiB gzip body inflating to 1 GiB would cost seconds of CPU. The
// gzip decompressor registered here stops at maxBytes instead.
func requestLimits(maxBytes int) connect.HandlerOption {
	return connect.WithHandlerOptions(
		connect.WithReadMaxBytes(maxBytes),
		connect.WithCompression("gzip",
			func() connect.Decompressor { return &boundedGzip{max: int64(maxBytes)} },
			func() connect.Compressor { return gzip.NewWriter(io.Discard) },
		),
	)
}

// rawBodyLimit is the most bytes a Server reads of a request body whose
// messages may hold maxBytes each after decompression: maxBytes with room for
// framing and for data that does not compress (gzip adds well under 1%).
func rawBodyLimit(maxBytes int) int64 {
	return int64(maxBytes) + int64(maxBytes)/16 + 16<<10
}

// limitBody stops h from reading more than rawBodyLimit(maxBytes) of a request
// body: connect-go reads an oversized message to its end to report its size,
// and over HTTP/1.1 an uncompressed body has no size limit of its own. A body
// over the limit is refused with resource_exhausted.
func limitBody(h http.Handler, maxBytes int) http.Handler {
	return http.MaxBytesHandler(h, rawBodyLimit(maxBytes))
}

// boundedGzip is a gzip connect.Decompressor that fails with
// resource_exhausted instead of inflating more than max bytes.
type boundedGzip struct {
	gzip.Reader
	max, left int64
}

func (g *boundedGzip) Reset(r io.Reader) error {
	g.left = g.max
	return g.Reader.Reset(r)
}

func (g *boundedGzip) Read(p []byte) (int, error) {
	if g.left <= 0 {
		// Exactly max bytes is fine; one more is not.
		var one [1]byte
		if n, err := g.Reader.Read(one[:]); n == 0 {
			return 0, err
		}
		return 0, connect.NewError(connect.CodeResourceExhausted,
			fmt.Errorf("the request message inflates to more than %d bytes, the most this server accepts: send a smaller message", g.max))
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	n, err := g.Reader.Read(p)
	g.left -= int64(n)
	return n, err
}
