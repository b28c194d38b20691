package cli

import (
	"log/slog"
	"regexp"
	"strings"
)

// secretKeys are log attribute keys whose values are never logged.
var secretKeys = regexp.MustCompile(`(?i)(password|passwd|secret|token|authorization)`)

// urlPassword finds the password of a URL's user info in a string.
var urlPassword = regexp.MustCompile(`(://[^:/?#@\s]+:)([^@/?#\s]+)(@)`)

// redactAttr keeps secrets out of the logs: values of attributes named like
// a secret, and the password of any URL in a string value or an error.
func redactAttr(_ []string, a slog.Attr) slog.Attr {
	if secretKeys.MatchString(a.Key) && a.Key != "consistency_token" {
		return slog.String(a.Key, "REDACTED")
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); strings.Contains(s, "://") {
			return slog.String(a.Key, redactURLs(s))
		}
	case slog.KindAny:
		if err, ok := a.Value.Any().(error); ok && strings.Contains(err.Error(), "://") {
			return slog.String(a.Key, redactURLs(err.Error()))
		}
	}
	return a
}

// redactURLs replaces the passwords of the URLs in s.
func redactURLs(s string) string {
	return urlPassword.ReplaceAllString(s, "${1}REDACTED${3}")
}
