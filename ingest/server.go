package ingest

import (
	"context"
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

// HandlerOptions are the options every domain handler mounted on a Server must
// be built with: protovalidate rules from the schema are enforced before the
// handler runs, so a bad request gets invalid_argument naming the field, and
// responses under CompressMinBytes are sent uncompressed. extra come last and
// may override them.
func HandlerOptions(extra ...connect.HandlerOption) []connect.HandlerOption {
	return append([]connect.HandlerOption{
		connect.WithInterceptors(validate.NewInterceptor()),
		connect.WithCompressMinBytes(CompressMinBytes),
	}, extra...)
}

// Server serves Connect, gRPC and gRPC-Web on one port (HTTP/1.1 and HTTP/2
// without TLS), with gRPC reflection and the gRPC health service for every
// mounted service. Mount everything before Serve.
type Server struct {
	mux    *http.ServeMux
	names  []string
	logger *slog.Logger
}

// NewServer returns an empty Server.
func NewServer(logger *slog.Logger) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Server{mux: http.NewServeMux(), logger: logger}
}

// Mount serves h under path (as a generated New...Handler returns them) for the
// fully qualified service name, which reflection and health then report.
func (s *Server) Mount(service, path string, h http.Handler) {
	s.names = append(s.names, service)
	s.mux.Handle(path, h)
}

// Handler returns the server's HTTP handler, with reflection and health added.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", s.mux)
	reflector := grpcreflect.NewStaticReflector(s.names...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(s.names...)))
	return mux
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
// requests finish for up to 10s and returns nil.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)
	srv := &http.Server{
		Handler:           s.Handler(),
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	s.logger.Info("serving Connect, gRPC and gRPC-Web", "addr", ln.Addr().String(), "services", s.names)
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdown); err != nil {
		srv.Close()
	}
	return nil
}
