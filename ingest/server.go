package ingest

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"connectrpc.com/validate"
)

// CompressMinBytes is the smallest response a Server compresses when the
// client accepts compression. connect-go compresses every response by
// default; for the few dozen bytes a command's answer holds, gzip costs more
// CPU than it saves (`heed bench` measured it at about 7% of the process).
const CompressMinBytes = 1024

// HandlerOptions are Server.HandlerOptions for a Server with the default
// limits (DefaultMaxRequestBytes).
func HandlerOptions(extra ...connect.HandlerOption) []connect.HandlerOption {
	return handlerOptions(DefaultMaxRequestBytes, extra)
}

// HandlerOptionsLimit is HandlerOptions for a server whose request limit is
// maxRequestBytes (WithMaxRequestBytes).
func HandlerOptionsLimit(maxRequestBytes int, extra ...connect.HandlerOption) []connect.HandlerOption {
	return handlerOptions(maxRequestBytes, extra)
}

// HandlerOptions are the options every domain handler mounted on s must be
// built with: a request message larger than the server's limit after
// decompression is refused with resource_exhausted without being inflated
// further; protovalidate rules from the schema are enforced before the handler
// runs, so a bad request gets invalid_argument naming the field; responses
// under CompressMinBytes are sent uncompressed. extra come last and may
// override them.
func (s *Server) HandlerOptions(extra ...connect.HandlerOption) []connect.HandlerOption {
	return handlerOptions(s.maxRequestBytes, extra)
}

func handlerOptions(maxRequestBytes int, extra []connect.HandlerOption) []connect.HandlerOption {
	return append([]connect.HandlerOption{
		requestLimits(maxRequestBytes),
		connect.WithInterceptors(validate.NewInterceptor()),
		connect.WithCompressMinBytes(CompressMinBytes),
	}, extra...)
}

// Server serves Connect, gRPC and gRPC-Web on one port (HTTP/1.1 and HTTP/2
// without TLS), with gRPC reflection and the gRPC health service for every
// mounted service. Mount everything before Serve.
//
// What one request may cost is bounded: its message size after decompression
// (WithMaxRequestBytes; the raw body is bounded just above it), the time to
// read it and the time an idle connection stays open (WithTimeouts). There is
// no write timeout: over HTTP/2 it would reset long-lived streams (the gRPC
// health service's Watch), and a handler's time is bounded by its own
// deadlines (a read with a consistency token waits at most its maximum wait,
// a command at most the produce timeout).
type Server struct {
	mux    *http.ServeMux
	names  []string
	logger *slog.Logger

	maxRequestBytes          int
	readTimeout, idleTimeout time.Duration
	shutdownTimeout          time.Duration

	// health answers the gRPC health service (default: every service
	// serving); guard wraps the mounted services' handlers (authentication),
	// not reflection's nor health's; tls, when set, serves TLS only.
	health grpchealth.Checker
	guard  func(http.Handler) http.Handler
	tls    *tls.Config
	// corsOrigins, when not empty, are the origins whose pages may call
	// every service from a browser (WithCORS).
	corsOrigins []string
}

// WithHealthChecker answers the gRPC health service with c instead of
// reporting every mounted service as serving.
func WithHealthChecker(c grpchealth.Checker) ServerOption {
	return func(s *Server) { s.health = c }
}

// WithGuard wraps the mounted services' handlers with guard (for example an
// authentication check); reflection and health stay outside it.
func WithGuard(guard func(http.Handler) http.Handler) ServerOption {
	return func(s *Server) { s.guard = guard }
}

// WithTLS serves TLS with cfg (HTTP/2 by ALPN, HTTP/1.1) instead of
// cleartext.
func WithTLS(cfg *tls.Config) ServerOption {
	return func(s *Server) { s.tls = cfg }
}

// NewServer returns an empty Server with the default limits, changed by opts.
func NewServer(logger *slog.Logger, opts ...ServerOption) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		mux:             http.NewServeMux(),
		logger:          logger,
		maxRequestBytes: DefaultMaxRequestBytes,
		readTimeout:     DefaultReadTimeout,
		idleTimeout:     DefaultIdleTimeout,
		shutdownTimeout: DefaultShutdownTimeout,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Mount serves h under path (as a generated New...Handler returns them) for the
// fully qualified service name, which reflection and health then report.
func (s *Server) Mount(service, path string, h http.Handler) {
	s.names = append(s.names, service)
	s.mux.Handle(path, h)
}

// Handler returns the server's HTTP handler, with reflection and health added,
// the request body bounded (see WithMaxRequestBytes) and, outermost, CORS
// (WithCORS): a preflight is answered before the guard, which it could not
// pass since browsers send it without the Authorization header.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	var domain http.Handler = s.mux
	if s.guard != nil {
		domain = s.guard(domain)
	}
	mux.Handle("/", domain)
	limits := requestLimits(s.maxRequestBytes)
	reflector := grpcreflect.NewStaticReflector(s.names...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector, limits))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector, limits))
	checker := s.health
	if checker == nil {
		checker = grpchealth.NewStaticChecker(s.names...)
	}
	mux.Handle(grpchealth.NewHandler(checker, limits))
	h := limitBody(mux, s.maxRequestBytes)
	if len(s.corsOrigins) > 0 {
		h = corsHandler(s.corsOrigins, h)
	}
	return h
}

// Listen opens a TCP listener on addr, with an error that says what to do when
// the port is taken.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("listen %s: address already in use: stop the other process or pass --listen with a free address", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w (check --listen)", addr, err)
	}
	return ln, nil
}

// Serve serves on ln until ctx ends, then stops accepting, lets in-flight
// requests finish for up to the shutdown timeout (WithShutdownTimeout),
// closes what is still open and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	if s.tls != nil {
		protocols.SetHTTP2(true)
		cfg := s.tls.Clone()
		if len(cfg.NextProtos) == 0 {
			cfg.NextProtos = []string{"h2", "http/1.1"}
		}
		ln = tls.NewListener(ln, cfg)
	} else {
		protocols.SetUnencryptedHTTP2(true)
	}
	srv := &http.Server{
		Handler:           s.Handler(),
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       s.readTimeout,
		IdleTimeout:       s.idleTimeout,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.logger.Info("serving Connect, gRPC and gRPC-Web", "addr", ln.Addr().String(), "services", s.names, "tls", s.tls != nil, "cors_allowed_origins", s.corsOrigins)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	s.logger.Info("stopping: no new connections; in-flight requests get the shutdown timeout to finish", "timeout", s.shutdownTimeout)
	shutdown, cancel := context.WithTimeout(context.Background(), s.shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		s.logger.Warn("in-flight requests did not finish within the shutdown timeout; closing their connections", "timeout", s.shutdownTimeout)
		srv.Close()
	}
	return nil
}
