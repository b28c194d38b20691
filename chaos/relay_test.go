package chaos

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// relayFaults is what the relay's faults keep in a stack: the blockade of
// the relay's produce requests, and the applier relay-revoke adds.
type relayFaults struct {
	once    sync.Once    // installs the blockade's control hook
	until   atomic.Int64 // Unix nanoseconds: the broker refuses the relay's produce requests until then
	refused atomic.Int64 // produce requests refused so, in all
	piled   atomic.Int64 // the most unsent rows seen during a relay-broker-down
	watch   sync.WaitGroup
	extra   *slot // a fourth applier, a dynamic member (relay-revoke)
}

// relayFaultKinds are the ledger's own faults (target.faults): the relay's.
// Booking emits no follow-ups, so they are the ledger's only.
var relayFaultKinds = []fault{
	{"relay-revoke", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		// A rebalance while the relays publish: their produce requests
		// are refused, so that each relay holding rows is stuck in the
		// middle of a run, then a fourth applier joins as a dynamic
		// member (partitions revoked from the others mid-run) and leaves
		// again (its own revoked mid-run). The old and the new owner of a
		// partition may both produce its rows: duplicates.
		before := s.relay.refused.Load()
		stay := time.Duration(3000+rng.IntN(2000)) * time.Millisecond
		s.blockRelay(stay + 2*time.Second)
		time.Sleep(500 * time.Millisecond)
		atJoin := s.relay.refused.Load() - before
		extra := s.extraApplier()
		s.start(extra)
		s.relay.watch.Add(1)
		go func() { // the run goes on meanwhile
			defer s.relay.watch.Done()
			time.Sleep(stay)
			s.terminate(extra)
			s.log.add("relay-revoke-leave", fmt.Sprintf("%s left (SIGTERM); the relay's produce requests were refused %d times since the join", extra.name, s.relay.refused.Load()-before-atJoin))
		}()
		return fmt.Sprintf("with the relay's produce requests refused (%d so far), a fourth applier joins as a dynamic member, to leave %v later", atJoin, stay), nil
	}},
	{"relay-broker-down", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		// The broker unreachable for the relay while the load goes on:
		// debits apply, their credits pile up in the outbox, and drain
		// once it is back. Longer than the relay producer's delivery
		// timeout (10 s) now and then, so that a produce may fail and the
		// relay's position stop at it.
		d := time.Duration(3000+rng.IntN(9000)) * time.Millisecond
		before := s.relay.refused.Load()
		s.blockRelay(d)
		s.relay.watch.Add(1)
		go func() {
			defer s.relay.watch.Done()
			most, err := s.watchUnsent(func() bool { return time.Now().UnixNano() < s.relay.until.Load() })
			for {
				if cur := s.relay.piled.Load(); most <= cur || s.relay.piled.CompareAndSwap(cur, most) {
					break
				}
			}
			s.log.add("relay-back", fmt.Sprintf("the broker takes the relay's produce requests again (%d refused meanwhile); unsent follow-ups rose to %d %v", s.relay.refused.Load()-before, most, errText(err)))
		}()
		return fmt.Sprintf("the broker drops the connection of every produce request carrying a follow-up (the relay's; commands and fetches go on) for %v", d), nil
	}},
	{"failpoint-emits", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		// SIGKILL at apply/before-commit in a batch that wrote outbox rows:
		// nothing of it happened, the debits are applied again and emit
		// again, byte for byte.
		sl := pick(rng, s.applies)
		at := 1 + rng.IntN(5)
		s.restartArmed(sl, fmt.Sprintf("apply/before-commit-emits=crash@%d", at))
		s.log.count("armed at apply/before-commit-emits")
		return fmt.Sprintf("%s restarted armed to crash before the commit of a batch holding follow-ups (hit %d)", sl.name, at), nil
	}},
	{"relay-after-ack", func(_ context.Context, s *stack, rng *rand.Rand) (string, error) {
		// SIGKILL after the broker acked a run of follow-ups, before the
		// relay moved its position past them: the restarted relay (or the
		// partitions' next owner) produces them again, and the applier
		// drops the duplicates.
		sl := pick(rng, s.applies)
		at := 1 + rng.IntN(3)
		s.restartArmed(sl, fmt.Sprintf("relay/after-ack=crash@%d", at))
		s.log.count("armed at relay/after-ack")
		return fmt.Sprintf("%s restarted armed to crash after the broker acked a run of follow-ups, before the relay records it (hit %d)", sl.name, at), nil
	}},
}

// followUpTypes are in the record batches of a produce request that
// carries a follow-up (its type, in its header and its payload): only the
// relay produces them, no RPC does.
var followUpTypes = [][]byte{[]byte("heed.ledger.v1.TransferCredited"), []byte("heed.ledger.v1.TransferRefunded")}

// holdsFollowUp reports whether req is a produce request carrying a
// follow-up. The records are uncompressed (heed's default).
func holdsFollowUp(req kmsg.Request) bool {
	pr, ok := req.(*kmsg.ProduceRequest)
	if !ok {
		return false
	}
	for _, t := range pr.Topics {
		for _, p := range t.Partitions {
			if slices.ContainsFunc(followUpTypes, func(typ []byte) bool { return bytes.Contains(p.Records, typ) }) {
				return true
			}
		}
	}
	return false
}

// blockRelay makes the broker drop the connection of every produce request
// carrying a follow-up from now until d from now, or later if it already
// does so until later.
func (s *stack) blockRelay(d time.Duration) {
	s.relay.once.Do(func() {
		s.broker.Cluster().ControlKey(kmsg.Produce.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
			if time.Now().UnixNano() >= s.relay.until.Load() || !holdsFollowUp(req) {
				return nil, nil, false // kept: a control is dropped only when it handles a request
			}
			s.relay.refused.Add(1)
			s.broker.Cluster().KeepControl()
			return nil, errInjected, true
		})
	})
	until := time.Now().Add(d).UnixNano()
	for {
		cur := s.relay.until.Load()
		if cur >= until || s.relay.until.CompareAndSwap(cur, until) {
			return
		}
	}
}

// healRelay lifts the relay's blockade at once and waits for the added
// applier to have left, if it runs.
func (s *stack) healRelay() {
	s.relay.until.Store(0)
	s.relay.watch.Wait()
	if s.relay.extra != nil {
		s.terminate(s.relay.extra)
	}
}

// extraApplier is the slot of a fourth applier, a dynamic member (no
// --group-instance-id) of the group; the stack does not revive it.
func (s *stack) extraApplier() *slot {
	if s.relay.extra == nil {
		var args []string
		for i := 0; i < len(s.applies[0].args); i++ {
			if a := s.applies[0].args[i]; a == "--group-instance-id" {
				i++
			} else {
				args = append(args, a)
			}
		}
		s.relay.extra = &slot{name: "apply-extra", args: args}
		s.t.Cleanup(func() { s.kill(s.relay.extra) })
	}
	return s.relay.extra
}

// watchUnsent samples every 250 ms, while more says so, how many outbox rows
// are unsent (their follow-up not processed), and returns the most it saw
// (-1 for none) and the last error reading it.
func (s *stack) watchUnsent(more func() bool) (int64, error) {
	most := int64(-1)
	var lastErr error
	for more() {
		time.Sleep(250 * time.Millisecond)
		n, err := s.unsent()
		if err != nil {
			lastErr = err
		} else if n > most {
			most = n
		}
	}
	return most, lastErr
}

// unsent counts the outbox rows whose follow-up is not processed.
func (s *stack) unsent() (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.dbURL)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	s.swap.RLock()
	defer s.swap.RUnlock()
	var n int64
	err = conn.QueryRow(ctx, `SELECT count(*) FROM `+s.table("outbox")+` o WHERE NOT EXISTS (SELECT FROM `+s.table("processed_events")+` p
WHERE p.event_id = o.event_id AND p.key_hash = o.key_hash)`).Scan(&n)
	return n, err
}

// errText says err, if any, for a schedule's line.
func errText(err error) string {
	if err == nil {
		return ""
	}
	return fmt.Sprintf("(a read failed: %v)", err)
}
