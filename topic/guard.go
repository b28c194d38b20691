package topic

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// DefaultGuardInterval is how often a Guard re-checks by default.
const DefaultGuardInterval = 2 * time.Second

// Guard keeps checking, while commands are admitted, that the broker's topic
// is the incarnation the projection is built from. It answers Admit and
// Partitions from its last check, without I/O, so that every command can ask.
// Its methods are safe for concurrent use.
type Guard struct {
	q        Querier
	cl       *kgo.Client
	name     string
	log      *slog.Logger
	interval time.Duration
	state    atomic.Pointer[guardState]
}

type guardState struct {
	err        error
	partitions int32
}

// NewGuard returns a Guard of the topic name, reading the broker through cl
// and the projection through q, checking every interval (0:
// DefaultGuardInterval). It admits nothing until its first Check succeeds.
func NewGuard(q Querier, cl *kgo.Client, name string, interval time.Duration, logger *slog.Logger) *Guard {
	if interval <= 0 {
		interval = DefaultGuardInterval
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	g := &Guard{q: q, cl: cl, name: name, log: logger, interval: interval}
	g.state.Store(&guardState{err: errors.New("the topic's identity has not been checked yet")})
	return g
}

// Check describes the topic, binds the projection to it (see Bind) and keeps
// the outcome for Admit and Partitions. It returns Bind's error, or the error
// reading the broker or the database, which leaves the previous outcome in
// place: an outage of the database must not stop commands, which only go to
// the broker.
func (g *Guard) Check(ctx context.Context) error {
	rec, err := Verify(ctx, g.q, g.cl, g.name)
	switch {
	case err == nil:
		g.state.Store(&guardState{partitions: rec.Partitions})
	case errors.Is(err, ErrOtherIncarnation), errors.Is(err, ErrAheadOfTopic), errors.Is(err, ErrPartitionsChanged):
		g.state.Store(&guardState{err: err, partitions: rec.Partitions})
	}
	return err
}

// Run checks every interval until ctx ends, logging when the outcome
// changes.
func (g *Guard) Run(ctx context.Context) {
	t := time.NewTicker(g.interval)
	defer t.Stop()
	var last string
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := g.Check(ctx)
		msg := ""
		if err != nil {
			msg = err.Error()
		}
		if msg != last && ctx.Err() == nil {
			switch {
			case err == nil:
				g.log.Info("topic identity matches the projection again; admitting commands", "topic", g.name)
			case g.Admit() != nil:
				g.log.Error("the topic no longer matches the projection; refusing commands", "topic", g.name, "err", err)
			default:
				g.log.Warn("cannot check the topic's identity; going on with the last check", "topic", g.name, "err", err)
			}
			last = msg
		}
	}
}

// Admit returns nil when the last check found the topic to be the projection's
// incarnation, and otherwise the mismatch, which says what to do.
func (g *Guard) Admit() error { return g.state.Load().err }

// Partitions is the partition count the projection was built with, which
// keys must hash over to keep their partition; 0 before a successful check.
func (g *Guard) Partitions() int32 { return g.state.Load().partitions }
