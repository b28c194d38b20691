// Package consistency implements read-your-writes: a command's response carries a
// token naming the partition and offset its event was written at, and a read that
// presents the token waits until the applier's committed position covers it.
package consistency

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Token locates a written event: partition and offset in the topic.
type Token struct {
	Partition int32
	Offset    int64
}

const version = 1

// String encodes t as an opaque, URL-safe string.
func (t Token) String() string {
	b := binary.AppendUvarint([]byte{version}, uint64(t.Partition))
	b = binary.AppendUvarint(b, uint64(t.Offset))
	return base64.RawURLEncoding.EncodeToString(b)
}

// ErrMalformed is wrapped by Parse's errors.
var ErrMalformed = errors.New("malformed consistency token")

// Parse decodes a token made by Token.String.
func Parse(s string) (Token, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) < 3 || b[0] != version {
		return Token{}, fmt.Errorf("%w %q: pass the consistency_token exactly as a command returned it", ErrMalformed, s)
	}
	p, n := binary.Uvarint(b[1:])
	if n <= 0 || p > 1<<31-1 {
		return Token{}, fmt.Errorf("%w %q: bad partition", ErrMalformed, s)
	}
	o, m := binary.Uvarint(b[1+n:])
	if m <= 0 || 1+n+m != len(b) || o > 1<<63-1 {
		return Token{}, fmt.Errorf("%w %q: bad offset", ErrMalformed, s)
	}
	return Token{Partition: int32(p), Offset: int64(o)}, nil
}

// Querier is what Wait reads positions through (a pgxpool.Pool or a conn).
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ErrNotYetApplied is returned by Wait when ctx ends before the token's event
// is applied.
var ErrNotYetApplied = errors.New("the write is not applied yet")

// Applied reports whether the applier's committed position for the token's
// partition of topic has passed the token's offset.
func Applied(ctx context.Context, q Querier, topic string, t Token) (bool, error) {
	var next int64
	err := q.QueryRow(ctx, `SELECT next_offset FROM applied_positions WHERE topic = $1 AND partition = $2`, topic, t.Partition).Scan(&next)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read applied position: %w", err)
	}
	return next > t.Offset, nil
}

// Wait polls until Applied is true or ctx ends; in the latter case it returns an
// error wrapping ErrNotYetApplied. Polling starts at 1ms and backs off to 50ms.
func Wait(ctx context.Context, q Querier, topic string, t Token) error {
	return wait(ctx, q, topic, t, nil)
}

// wait is Wait, calling pending (if not nil) once, when the first look finds
// the token's write not applied yet.
func wait(ctx context.Context, q Querier, topic string, t Token, pending func()) error {
	delay := time.Millisecond
	for {
		ok, err := Applied(ctx, q, topic, t)
		if ctx.Err() != nil {
			return fmt.Errorf("%w (partition %d offset %d): is `heed apply` running?", ErrNotYetApplied, t.Partition, t.Offset)
		}
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if pending != nil {
			pending()
			pending = nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
			delay = min(2*delay, 50*time.Millisecond)
		}
	}
}
