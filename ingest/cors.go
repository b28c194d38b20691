package ingest

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// CORSMaxAge is how long, in seconds, a browser may cache a Server's answer
// to a CORS preflight (browsers cap it: Chromium at 2 hours).
const CORSMaxAge = 2 * 60 * 60

// CORSAllowedHeaders are the request headers a page on an allowed origin may
// send: the Connect, gRPC-Web and shared ones connect's CORS helpers name,
// Authorization (the bearer token auth.Guard checks) and the W3C trace
// context headers (the tracing interceptor continues a caller's trace).
func CORSAllowedHeaders() []string {
	return append(connectcors.AllowedHeaders(), "Authorization", "Traceparent", "Tracestate")
}

// WithCORS lets web pages served from origins call the mounted services from
// a browser (Connect and gRPC-Web): preflight requests are answered, and
// responses to those origins carry the CORS headers, refusals of the guard
// included, so that a page can read why it was refused. Each origin is a
// scheme://host[:port] as browsers send it, may hold one * wildcard
// (https://*.example.com), or is "*" for every origin. An empty list is no
// CORS at all, the default: browsers then refuse pages on other origins the
// answers. ValidateOrigins checks the list; NewServer does not.
//
// No credentials (cookies) are involved: a page sends its bearer token in the
// Authorization header, which the preflight admits.
func WithCORS(origins []string) ServerOption {
	return func(s *Server) { s.corsOrigins = origins }
}

// corsHandler wraps h with the CORS middleware for origins.
func corsHandler(origins []string, h http.Handler) http.Handler {
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: CORSAllowedHeaders(),
		ExposedHeaders: connectcors.ExposedHeaders(),
		MaxAge:         CORSMaxAge,
	}).Handler(h)
}

// ValidateOrigins checks origins for WithCORS: each must be "*" or a
// scheme://host[:port] with scheme http or https and nothing after the port,
// as a browser's Origin header is (a trailing slash never matches).
func ValidateOrigins(origins []string) error {
	if len(origins) == 0 {
		return nil
	}
	for _, o := range origins {
		if err := validateOrigin(o); err != nil {
			return err
		}
	}
	return nil
}

func validateOrigin(o string) error {
	if o == "*" {
		return nil
	}
	if o == "" {
		return errors.New("an empty origin: list origins such as https://app.example.com, separated by commas")
	}
	if strings.Count(o, "*") > 1 {
		return fmt.Errorf("origin %q: at most one * wildcard", o)
	}
	u, err := url.Parse(strings.Replace(o, "*", "wildcard", 1))
	if err != nil {
		return fmt.Errorf("origin %q: %v; want scheme://host[:port], e.g. https://app.example.com", o, err)
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("origin %q: want http:// or https:// and a host, e.g. https://app.example.com", o)
	case u.Host == "" || u.User != nil:
		return fmt.Errorf("origin %q: want scheme://host[:port], e.g. https://app.example.com", o)
	case u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.ForceQuery:
		return fmt.Errorf("origin %q: an origin has no path (not even a trailing /): use %s://%s", o, u.Scheme, strings.Replace(u.Host, "wildcard", "*", 1))
	}
	return nil
}
