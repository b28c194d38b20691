package consistency_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/consistency"
)

// positions is a consistency.Querier over one partition's applied position:
// next < 0 means no row; err fails every read.
type positions struct {
	next  atomic.Int64
	err   error
	reads atomic.Int64
}

type row struct {
	next int64
	err  error
}

func (r row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	*dest[0].(*int64) = r.next
	return nil
}

func (p *positions) QueryRow(context.Context, string, ...any) pgx.Row {
	p.reads.Add(1)
	switch n := p.next.Load(); {
	case p.err != nil:
		return row{err: p.err}
	case n < 0:
		return row{err: pgx.ErrNoRows}
	default:
		return row{next: n}
	}
}

// A write is applied once the partition's next offset is past it: not at its
// own offset (the position names the next record to apply), not without a
// position.
func TestApplied(t *testing.T) {
	tok := consistency.Token{Partition: 2, Offset: 7}
	for _, c := range []struct {
		next int64
		want bool
	}{{-1, false}, {0, false}, {7, false}, {8, true}, {100, true}} {
		p := new(positions)
		p.next.Store(c.next)
		got, err := consistency.Applied(t.Context(), p, "t", tok)
		if err != nil || got != c.want {
			t.Errorf("next offset %d: Applied = %v, %v; want %v", c.next, got, err, c.want)
		}
	}
	broken := &positions{err: errors.New("connection refused")}
	if _, err := consistency.Applied(t.Context(), broken, "t", tok); err == nil || !errors.Is(err, broken.err) {
		t.Errorf("a failed read: %v, want the error wrapped", err)
	}
}

// Wait returns once the position passes the token, and with ErrNotYetApplied
// when its context ends first.
func TestWait(t *testing.T) {
	tok := consistency.Token{Partition: 0, Offset: 3}
	p := new(positions)
	p.next.Store(3)
	go func() {
		time.Sleep(30 * time.Millisecond)
		p.next.Store(4)
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if err := consistency.Wait(ctx, p, "t", tok); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if n := p.reads.Load(); n < 2 {
		t.Errorf("Wait read the position %d times, want it to poll until the write was applied", n)
	}

	stuck := new(positions)
	stuck.next.Store(3)
	ctx, cancel = context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := consistency.Wait(ctx, stuck, "t", tok); !errors.Is(err, consistency.ErrNotYetApplied) {
		t.Errorf("Wait on a position that never moves: %v, want ErrNotYetApplied", err)
	}
	broken := &positions{err: errors.New("connection refused")}
	if err := consistency.Wait(t.Context(), broken, "t", tok); err == nil || errors.Is(err, consistency.ErrNotYetApplied) {
		t.Errorf("Wait on a failing read: %v, want the read's error", err)
	}
}
