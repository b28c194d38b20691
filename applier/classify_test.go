package applier_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
)

// Classify decides once what every failure calls for; only failures known to
// come from data are blamed on an event.
func TestClassify(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("write and commit: %w", &pgconn.PgError{Code: code}) }
	cases := []struct {
		name string
		err  error
		want applier.ErrorClass
	}{
		{"EventError", fmt.Errorf("apply events: %w", applier.Quarantine(applier.Event{Offset: 3}, "no")), applier.Poison},
		{"NUL in text (22021)", pg("22021"), applier.EventCaused},
		{"numeric out of range (22003)", pg("22003"), applier.EventCaused},
		{"check violation (23514)", pg("23514"), applier.EventCaused},
		{"unique violation (23505)", pg("23505"), applier.EventCaused},
		{"index row too large (54000)", pg("54000"), applier.EventCaused},
		{"recorded concurrently (23505 on processed_events)", fmt.Errorf("x: %w (%w)", dedup.ErrRecordedConcurrently, &pgconn.PgError{Code: "23505"}), applier.Transient},
		{"serialization failure (40001)", pg("40001"), applier.Transient},
		{"deadlock (40P01)", pg("40P01"), applier.Transient},
		{"admin shutdown (57P01)", pg("57P01"), applier.Transient},
		{"too many connections (53300)", pg("53300"), applier.Transient},
		{"lock not available (55P03)", pg("55P03"), applier.Transient},
		{"internal error (XX000)", pg("XX000"), applier.Transient},
		{"undefined table (42P01)", pg("42P01"), applier.Systemic},
		{"insufficient privilege (42501)", pg("42501"), applier.Systemic},
		{"invalid schema (3F000)", pg("3F000"), applier.Systemic},
		{"raise exception (P0001)", pg("P0001"), applier.Systemic},
		{"context deadline", fmt.Errorf("begin: %w", context.DeadlineExceeded), applier.Transient},
		{"network", &net.OpError{Op: "read", Err: errors.New("connection reset")}, applier.Transient},
		{"EOF", io.ErrUnexpectedEOF, applier.Transient},
		{"unknown handler error", errors.New("something"), applier.Transient},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := applier.Classify(c.err); got != c.want {
				t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}
