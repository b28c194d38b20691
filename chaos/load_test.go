package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
)

// command is one command the load sent and got acknowledged. Which fields
// it uses depends on the target's domain.
type command struct {
	requestID string
	key       string // its aggregate, the record key: an account, a show
	kind      string // open, deposit, withdraw, transfer; create, hold, confirm, release
	amount    int64  // a deposit's, a withdrawal's or a transfer's
	to        string // a transfer's destination (key is its source)
	hold      string // the hold a hold, confirm or release names
	seats     []string
	ttl       time.Duration // a hold's
}

// load sends the target's commands from workers, each to a random server,
// each retried with its request ID (on any error: unavailable, a timeout, a
// connection refused by a server that is down) until acknowledged, and
// records every acknowledged command, and every command sent (before its
// first send), by its event, for the readers during the run.
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	acked   []command
	sent    map[eventRef]command
	retries int
	once    sync.Once
	// giveUp, once stop set it (Unix nanoseconds), is when a worker stops
	// retrying its last command; unacked then says which and why.
	giveUp  atomic.Int64
	unacked []string
}

// drainTimeout bounds how long stop waits for the commands in flight to be
// acknowledged: a stack that never takes them again fails the test, with
// the reason, instead of hanging it.
const drainTimeout = 2 * time.Minute

// startLoad starts workers workers sending tg's commands to the servers at
// addrs; worker w draws from a generator seeded with seed and w.
func startLoad(tg *target, addrs []string, workers int, seed uint64) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, sent: map[eventRef]command{}}
	ids := tg.dom.IDs()
	senders := make([]sender, len(addrs))
	for i, a := range addrs {
		senders[i] = tg.client(a)
	}
	for w := range workers {
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		next := tg.worker(w, workers, rng)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				c := next(i)
				l.mu.Lock()
				l.sent[eventRef{ids.EventID(c.requestID), c.key}] = c
				l.mu.Unlock()
				// Once sent, a command is retried until acknowledged, even
				// after stop: it may have been written already.
				var err error
				for try := 0; ; try++ {
					if g := l.giveUp.Load(); try > 0 && g != 0 && time.Now().UnixNano() > g {
						l.mu.Lock()
						l.unacked = append(l.unacked, fmt.Sprintf("%s %s of %s, last error: %v", c.kind, c.requestID, c.key, err))
						l.mu.Unlock()
						return
					}
					if try > 0 {
						l.mu.Lock()
						l.retries++
						l.mu.Unlock()
						time.Sleep(time.Duration(20+rng.IntN(80)) * time.Millisecond)
					}
					if err = send(senders[rng.IntN(len(senders))], c); err == nil {
						break
					}
				}
				l.mu.Lock()
				l.acked = append(l.acked, c)
				l.mu.Unlock()
				time.Sleep(tg.pause)
			}
		}()
	}
	return l
}

// eventRef names a processed event: its event ID and its key.
type eventRef struct {
	id  uuid.UUID
	key string
}

// withSent calls f with the commands sent so far, by their events; f must
// not keep the map.
func (l *load) withSent(f func(map[eventRef]command)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(l.sent)
}

// A sender sends one command to one server and returns once it is
// acknowledged, or the error.
type sender func(ctx context.Context, c command) error

// send sends c through to, bounded by five seconds.
func send(to sender, c command) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return to(ctx, c)
}

// httpClient is the HTTP client of every sender.
var httpClient = &http.Client{Timeout: 10 * time.Second}

// stop ends the load once every command sent is acknowledged, or
// drainTimeout has passed (see stuck), and returns the acknowledged commands
// and how many sends were retries.
func (l *load) stop() ([]command, int) {
	l.once.Do(func() {
		l.giveUp.Store(time.Now().Add(drainTimeout).UnixNano())
		l.cancel()
		l.wg.Wait()
	})
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.acked, l.retries
}

// stuck lists the commands that were not acknowledged within drainTimeout
// after stop, with the last error of each.
func (l *load) stuck() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.unacked
}

// checkDrained fails t when commands were left unacknowledged, with the
// tail of every server's output: why they refused.
func checkDrained(t *testing.T, s *stack, l *load) {
	t.Helper()
	stuck := l.stuck()
	if len(stuck) == 0 {
		return
	}
	var tails []string
	for _, sl := range s.serves {
		if p := sl.running(); p != nil {
			p.mu.Lock()
			out := p.out.String()
			p.mu.Unlock()
			tails = append(tails, fmt.Sprintf("%s (last 4000 bytes):\n%s", sl.name, out[max(0, len(out)-4000):]))
		}
	}
	t.Fatalf("%d commands were not acknowledged within %v after the load stopped: %s\n%s", len(stuck), drainTimeout, strings.Join(stuck, "; "), strings.Join(tails, "\n"))
}

// stopReviving stops the load as stop does, starting again meanwhile, every
// second, each process that is down, as a supervisor would: a serve started
// while the broker was down exits at once ("list brokers: ... connection
// refused"), and the commands in flight wait for a server that takes them.
func stopReviving(s *stack, l *load) ([]command, int) {
	var (
		acked   []command
		retries int
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		acked, retries = l.stop()
	}()
	for {
		select {
		case <-done:
			return acked, retries
		case <-time.After(time.Second):
			if n := s.revive(); n > 0 {
				s.log.add("revive", fmt.Sprintf("%d processes started again while the load drained", n))
			}
		}
	}
}
