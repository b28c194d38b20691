package consistency_test

import (
	"context"
	"errors"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/heed-dev/heed/consistency"
)

// topicEnds is a consistency.EndOffsets whose answer the test sets; it counts
// reads and the most that ran at once. With gate set, each read waits for a
// value on it.
type topicEnds struct {
	mu          sync.Mutex
	ends        map[int32]int64
	err         error
	reads       int
	running     int
	mostRunning int
	gate        chan struct{}
}

func (f *topicEnds) EndOffsets(context.Context) (map[int32]int64, error) {
	f.mu.Lock()
	f.reads++
	f.running++
	f.mostRunning = max(f.mostRunning, f.running)
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		<-gate
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running--
	return maps.Clone(f.ends), f.err
}

func (f *topicEnds) set(ends map[int32]int64, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ends, f.err = ends, err
}

func (f *topicEnds) counts() (reads, mostRunning int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reads, f.mostRunning
}

// Check lets a token within the last end offsets read through without a new
// read, reads again before refusing one at or past them, and refuses only
// tokens past the ends of a read made after it was called.
func TestEndsCheck(t *testing.T) {
	src := &topicEnds{ends: map[int32]int64{0: 5, 1: 0}}
	ends := consistency.NewEnds(src, time.Hour) // the cache never expires in this test
	steps := []struct {
		name      string
		set       map[int32]int64 // the topic's ends from this step on, if not nil
		tok       consistency.Token
		refused   bool
		wantReads int
	}{
		{"first token reads", nil, consistency.Token{Partition: 0, Offset: 4}, false, 1},
		{"within the ends read: no read", nil, consistency.Token{Partition: 0, Offset: 0}, false, 1},
		{"the topic grew: read again", map[int32]int64{0: 10, 1: 0}, consistency.Token{Partition: 0, Offset: 7}, false, 2},
		{"at the end", nil, consistency.Token{Partition: 0, Offset: 10}, true, 3},
		{"empty partition", nil, consistency.Token{Partition: 1, Offset: 0}, true, 4},
		{"no such partition", nil, consistency.Token{Partition: 2, Offset: 0}, true, 5},
		{"within again: no read", nil, consistency.Token{Partition: 0, Offset: 9}, false, 5},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			if s.set != nil {
				src.set(s.set, nil)
			}
			err := ends.Check(t.Context(), s.tok)
			if refused := errors.Is(err, consistency.ErrNotInTopic); refused != s.refused || !refused && err != nil {
				t.Errorf("Check(%+v) = %v, want refused=%v", s.tok, err, s.refused)
			}
			if reads, _ := src.counts(); reads != s.wantReads {
				t.Errorf("%d reads of the end offsets so far, want %d", reads, s.wantReads)
			}
		})
	}
}

// A failed read is reported as such, never as a token not in the topic, and
// the next check reads again.
func TestEndsReadFails(t *testing.T) {
	src := &topicEnds{}
	src.set(nil, errors.New("broker down"))
	ends := consistency.NewEnds(src, time.Hour)
	tok := consistency.Token{Partition: 0, Offset: 3}
	if err := ends.Check(t.Context(), tok); err == nil || errors.Is(err, consistency.ErrNotInTopic) {
		t.Fatalf("Check with the broker down = %v, want the read's error", err)
	}
	src.set(map[int32]int64{0: 4}, nil)
	if err := ends.Check(t.Context(), tok); err != nil {
		t.Fatalf("Check after the broker is back = %v", err)
	}
	if reads, _ := src.counts(); reads != 2 {
		t.Errorf("%d reads, want 2", reads)
	}
}

// Concurrent checks share reads: one runs at a time, and a check waiting for
// a read gives up when its context ends.
func TestEndsChecksShareReads(t *testing.T) {
	gate := make(chan struct{})
	src := &topicEnds{ends: map[int32]int64{0: 1}, gate: gate}
	ends := consistency.NewEnds(src, time.Hour)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := ends.Check(ctx, consistency.Token{Partition: 0, Offset: 0}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Check with a canceled context while the read waits = %v, want context.Canceled", err)
	}

	const checkers = 20
	errs := make(chan error, checkers)
	for i := range checkers {
		go func() { errs <- ends.Check(t.Context(), consistency.Token{Partition: 0, Offset: int64(i % 2)}) }()
	}
	refused := 0
	for answered := 0; answered < checkers; {
		select {
		case err := <-errs:
			answered++
			if errors.Is(err, consistency.ErrNotInTopic) {
				refused++
			} else if err != nil {
				t.Errorf("Check: %v", err)
			}
		case gate <- struct{}{}: // let one read finish
		}
	}
	close(gate)
	if refused != checkers/2 {
		t.Errorf("%d of %d checks refused, want the %d at offset 1", refused, checkers, checkers/2)
	}
	if reads, most := src.counts(); most != 1 || reads > checkers+1 {
		t.Errorf("%d reads, at most %d at once; want one at a time", reads, most)
	}
}
