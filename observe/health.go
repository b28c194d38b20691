package observe

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/grpchealth"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/heed-dev/heed/applier"
)

// Check is one readiness check: nil when its part is ready.
type Check struct {
	Name string
	Fn   func(ctx context.Context) error
}

// StallCheck is the readiness check "stalled": it fails, naming them, while
// partitions the applier owns have records waiting and their applied
// position has not moved for max (stalled is applier.Applier.Stalled).
func StallCheck(stalled func() []applier.Stall, max time.Duration) Check {
	return Check{Name: "stalled", Fn: func(context.Context) error {
		var long []string
		for _, s := range stalled() {
			if s.Since >= max {
				long = append(long, s.String())
			}
		}
		if len(long) == 0 {
			return nil
		}
		return fmt.Errorf("partitions with records waiting have not moved for %v (--ready-max-stall): %s", max, strings.Join(long, "; "))
	}}
}

// Health runs readiness checks, at most once per second whatever asks
// (/readyz, the gRPC health service), each bounded by two seconds.
type Health struct {
	checks []Check
	mu     sync.Mutex
	at     time.Time
	last   map[string]error
}

// NewHealth returns a Health over checks.
func NewHealth(checks ...Check) *Health { return &Health{checks: checks} }

// Add adds checks; safe while the checks are served (heed dev's applier adds
// its checks once the server is up). The next Results runs them.
func (h *Health) Add(checks ...Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, checks...)
	h.last = nil
}

// Results runs the checks (or returns the last results, if under a second
// old) and returns each check's error by name.
func (h *Health) Results(ctx context.Context) map[string]error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.last != nil && time.Since(h.at) < time.Second {
		return h.last
	}
	out := make(map[string]error, len(h.checks))
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, c := range h.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			err := c.Fn(cctx)
			mu.Lock()
			out[c.Name] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	h.last, h.at = out, time.Now()
	return out
}

// Ready is nil when every check passes, else an error naming the failures.
func (h *Health) Ready(ctx context.Context) error {
	var failed []string
	for name, err := range h.Results(ctx) {
		if err != nil {
			failed = append(failed, name+": "+err.Error())
		}
	}
	if len(failed) == 0 {
		return nil
	}
	sort.Strings(failed)
	return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(failed, "; "))
}

// Checker is the gRPC health service's checker for services: SERVING when
// every check passes, NOT_SERVING otherwise ("" and every service alike).
func (h *Health) Checker(services ...string) grpchealth.Checker {
	return healthChecker{h: h, services: services}
}

type healthChecker struct {
	h        *Health
	services []string
}

func (c healthChecker) Check(ctx context.Context, req *grpchealth.CheckRequest) (*grpchealth.CheckResponse, error) {
	if req.Service != "" && !slices.Contains(c.services, req.Service) {
		return nil, grpcNotFound(req.Service)
	}
	if c.h.Ready(ctx) != nil {
		return &grpchealth.CheckResponse{Status: grpchealth.StatusNotServing}, nil
	}
	return &grpchealth.CheckResponse{Status: grpchealth.StatusServing}, nil
}

// Handler serves /metrics (m), /healthz (the process is alive: always 200)
// and /readyz (h: 200 listing each check, 503 naming the failing ones).
func Handler(m *Metrics, h *Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.Gatherer(), promhttp.HandlerOpts{Registry: m.Registry()}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		res := h.Results(r.Context())
		names := make([]string, 0, len(res))
		ready := true
		for name, err := range res {
			names = append(names, name)
			ready = ready && err == nil
		}
		sort.Strings(names)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		for _, name := range names {
			if err := res[name]; err != nil {
				fmt.Fprintf(w, "%s: %v\n", name, err)
			} else {
				fmt.Fprintf(w, "%s: ok\n", name)
			}
		}
	})
	return mux
}

// Listen opens addr for Serve, with an error that names the flag.
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if errors.Is(err, syscall.EADDRINUSE) {
		return nil, fmt.Errorf("metrics: listen %s: address already in use (another heed process on this machine?): pass --metrics-listen with a free address, or --metrics-listen '' to serve no metrics", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("metrics: listen %s: %w (check --metrics-listen)", addr, err)
	}
	return ln, nil
}

// Serve serves Handler(m, h) on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, m *Metrics, h *Health, logger *slog.Logger) error {
	srv := &http.Server{Handler: Handler(m, h), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	logger.Info("serving metrics and health", "addr", ln.Addr().String(), "paths", "/metrics /healthz /readyz")
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return nil
}

func grpcNotFound(service string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("unknown service %s", service))
}
