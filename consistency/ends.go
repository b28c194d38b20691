package consistency

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// EndOffsets reads where a topic's partitions end, from the brokers.
// ingest.Publisher implements it.
type EndOffsets interface {
	// EndOffsets returns every partition of the topic with its end offset (the
	// offset the next record written to it gets), as the brokers report it when
	// called. It fails, rather than leave a partition out, when one cannot be
	// listed. It must be safe for concurrent use.
	EndOffsets(ctx context.Context) (map[int32]int64, error)
}

// ListEndOffsets returns every partition of topic with its end offset (the
// offset the next record written to it gets), as the brokers report it now: a
// metadata and a ListOffsets round trip through cl. It fails when the topic or
// any of its partitions cannot be listed.
func ListEndOffsets(ctx context.Context, cl *kgo.Client, topic string) (map[int32]int64, error) {
	listed, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	parts, ok := listed[topic]
	if !ok || len(parts) == 0 {
		return nil, fmt.Errorf("list end offsets of %s: no partitions listed", topic)
	}
	ends := make(map[int32]int64, len(parts))
	for part, o := range parts {
		if o.Err != nil {
			return nil, fmt.Errorf("list end offset of %s partition %d: %w", topic, part, o.Err)
		}
		ends[part] = o.Offset
	}
	return ends, nil
}

// ErrNotInTopic is wrapped by the error of a token that points past its
// partition's end or at a partition the topic does not have: no write to the
// topic returned it (it is forged, or from another topic).
var ErrNotInTopic = errors.New("it was not issued by this heed's topic: pass a token a command returned, or none")

// endsTimeout bounds one read of the end offsets.
const endsTimeout = 10 * time.Second

// Ends tells a token whose write is not applied yet from one that no write to
// the topic returned, by the topic's end offsets. It keeps the last ones it
// read for a while, so that a token within them costs no round trip; a token
// at or past them is judged on end offsets read after it was asked about, so a
// token issued a moment ago is never refused. One read runs at a time: callers
// that need a newer one share the next. It is safe for concurrent use.
type Ends struct {
	src    EndOffsets
	maxAge time.Duration

	mu   sync.Mutex
	last *endsRead // the latest read, done or in flight
}

// endsRead is one read of the end offsets; ends and err are set before done
// is closed.
type endsRead struct {
	started time.Time
	done    chan struct{}
	ends    map[int32]int64
	err     error
}

// NewEnds returns an Ends reading src, that trusts what it read for maxAge
// (1s if maxAge <= 0) to let a token within it through.
func NewEnds(src EndOffsets, maxAge time.Duration) *Ends {
	if maxAge <= 0 {
		maxAge = time.Second
	}
	return &Ends{src: src, maxAge: maxAge}
}

// Check returns nil when t points into the topic: its partition exists and its
// offset lies below the partition's end. Otherwise it returns an error wrapping
// ErrNotInTopic, decided on end offsets read after Check was called; or the
// error of reading them, or ctx's.
func (e *Ends) Check(ctx context.Context, t Token) error {
	asked := time.Now()
	if ends, ok := e.cached(asked); ok && within(ends, t) == nil {
		return nil
	}
	for {
		r := e.read(asked)
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.started.Before(asked) {
			continue // read before the token was asked about: wait for the next
		}
		if r.err != nil {
			return fmt.Errorf("read the topic's end offsets: %w", r.err)
		}
		return within(r.ends, t)
	}
}

// cached returns the end offsets of the last read, if it succeeded at most
// maxAge before now.
func (e *Ends) cached(now time.Time) (map[int32]int64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		return nil, false
	}
	select {
	case <-e.last.done:
		return e.last.ends, e.last.err == nil && now.Sub(e.last.started) <= e.maxAge
	default:
		return nil, false
	}
}

// read returns the read in flight, or the last one if it is done and started
// at or after asked, or else a new read.
func (e *Ends) read(asked time.Time) *endsRead {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r := e.last; r != nil {
		select {
		case <-r.done:
			if !r.started.Before(asked) {
				return r
			}
		default:
			return r
		}
	}
	r := &endsRead{started: time.Now(), done: make(chan struct{})}
	e.last = r
	go func() {
		// Shared by every caller waiting for it, so not bound to one's ctx.
		ctx, cancel := context.WithTimeout(context.Background(), endsTimeout)
		defer cancel()
		r.ends, r.err = e.src.EndOffsets(ctx)
		close(r.done)
	}()
	return r
}

// within checks t against ends.
func within(ends map[int32]int64, t Token) error {
	end, ok := ends[t.Partition]
	if !ok {
		return fmt.Errorf("consistency token points at partition %d, which the topic does not have (it has %d): %w", t.Partition, len(ends), ErrNotInTopic)
	}
	if t.Offset >= end {
		return fmt.Errorf("consistency token points at partition %d offset %d, past the topic's end (%d): %w", t.Partition, t.Offset, end, ErrNotInTopic)
	}
	return nil
}

// WaitWithin is Wait for a token that must point into the topic ends reads:
// when the token's write is not applied at the first look, it checks the token
// against ends while it polls, and returns as soon as the check fails with an
// error wrapping ErrNotInTopic, instead of polling until ctx ends. Failing to
// read the end offsets leaves the wait as Wait's. With a nil ends it is Wait.
func WaitWithin(ctx context.Context, q Querier, topic string, t Token, ends *Ends) error {
	if ends == nil {
		return Wait(ctx, q, topic, t)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	err := wait(ctx, q, topic, t, func() {
		go func() {
			if err := ends.Check(ctx, t); errors.Is(err, ErrNotInTopic) {
				cancel(err)
			}
		}()
	})
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, ErrNotInTopic) {
		return cause
	}
	return err
}
