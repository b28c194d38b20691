package chaos

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ledger"
)

// followUp is an outbox row of the ledger: a transfer's credit or refund.
type followUp struct {
	eventRef          // the follow-up's event and key
	name      string  // ledger.StepCredit or ledger.StepRefund
	partition int32   // the origin partition
	offset    int64   // the origin offset
	amount    int64   // the transfer's
	source    string  // the transfer's source account
	status    outcome // its processed row's; lost (0) for none
}

// querier is a connection or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// readFollowUps reads the outbox with each row's processed status, the
// amount and the source account decoded from its record value.
func readFollowUps(ctx context.Context, q querier, s *stack) ([]followUp, error) {
	rows, err := q.Query(ctx, `SELECT o.event_id, o.key, o.name, o.origin_partition, o.origin_offset, o.value,
coalesce((SELECT p.status FROM `+s.table("processed_events")+` p WHERE p.event_id = o.event_id AND p.key_hash = o.key_hash), 0)
FROM `+s.table("outbox")+` o WHERE o.topic = $1`, s.topic())
	if err != nil {
		return nil, err
	}
	var out []followUp
	for rows.Next() {
		var (
			f     followUp
			id    [16]byte
			value []byte
		)
		if err := rows.Scan(&id, &f.key, &f.name, &f.partition, &f.offset, &value, &f.status); err != nil {
			return nil, err
		}
		f.id = id
		if f.amount, f.source, err = followUpAmount(value); err != nil {
			return nil, fmt.Errorf("outbox row %d/%d %s: %w", f.partition, f.offset, f.name, err)
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// followUpAmount is the amount and the transfer's source account of a
// credit's or a refund's record value.
func followUpAmount(value []byte) (int64, string, error) {
	var env envelopev1.Envelope
	if err := proto.Unmarshal(value, &env); err != nil {
		return 0, "", err
	}
	m, err := env.GetPayload().UnmarshalNew()
	if err != nil {
		return 0, "", err
	}
	switch p := m.(type) {
	case *ledgerv1.TransferCredited:
		return p.GetAmount(), p.GetFromAccountId(), nil
	case *ledgerv1.TransferRefunded:
		return p.GetAmount(), p.GetFromAccountId(), nil
	}
	return 0, "", fmt.Errorf("a follow-up of type %T", m)
}

// money is what one snapshot of the ledger holds, for conservation.
type money struct {
	balances int64      // the sum of every balance
	applied  []eventRef // the applied events that are not follow-ups
	// credits sums the credits emitted (each applied debit emits one in its
	// transaction), inFlight the ones neither applied nor refunded (their
	// refund applied).
	credits, inFlight int64
	// twice lists the transfers both credited and refunded, strays the
	// refunds of no credit in the outbox.
	twice, strays []string
}

// readMoney reads money in one REPEATABLE READ transaction on conn, one
// projection whole (s.swap keeps a swap out).
func readMoney(ctx context.Context, s *stack, conn *pgx.Conn) (money, error) {
	var m money
	s.swap.RLock()
	defer s.swap.RUnlock()
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return m, err
	}
	defer tx.Rollback(context.Background()) //nolint:errcheck // read only
	if err := tx.QueryRow(ctx, `SELECT coalesce(sum(balance), 0)::int8 FROM `+s.table("accounts")).Scan(&m.balances); err != nil {
		return m, err
	}
	rows, err := tx.Query(ctx, `SELECT event_id, coalesce(aggregate, '') FROM `+s.table("processed_events")+` p WHERE status = 2
AND NOT EXISTS (SELECT FROM `+s.table("outbox")+` o WHERE o.event_id = p.event_id AND o.key_hash = p.key_hash)`)
	if err != nil {
		return m, err
	}
	for rows.Next() {
		var (
			id  [16]byte
			key string
		)
		if err := rows.Scan(&id, &key); err != nil {
			return m, err
		}
		m.applied = append(m.applied, eventRef{id, key})
	}
	if err := rows.Err(); err != nil {
		return m, err
	}
	fs, err := readFollowUps(ctx, tx, s)
	if err != nil {
		return m, err
	}
	refunds := map[eventRef]followUp{}
	for _, f := range fs {
		if f.name == ledger.StepRefund {
			refunds[f.eventRef] = f
		}
	}
	for _, f := range fs {
		if f.name != ledger.StepCredit {
			continue
		}
		m.credits += f.amount
		ref := eventRef{s.tg.dom.FollowUpEventID(f.id, f.key, ledger.StepRefund), f.source}
		refund, refunded := refunds[ref]
		delete(refunds, ref)
		switch {
		case f.status == applied && refunded:
			m.twice = append(m.twice, fmt.Sprintf("credit %v of %s", f.id, f.key))
		case f.status == applied, refunded && refund.status == applied:
		default:
			m.inFlight += f.amount
		}
	}
	for _, r := range refunds {
		m.strays = append(m.strays, fmt.Sprintf("refund %v of %s", r.id, r.key))
	}
	return m, nil
}

// watchMoney is the ledger's check during the run (target.during): at
// random moments (every 0.2–0.8 s) it reads money in one snapshot and
// checks that the balances plus the transfers in flight (credits emitted,
// neither applied nor refunded) equal the deposits minus the withdrawals
// applied in that snapshot (their amounts are the load's, which registers
// every command before sending it), that the credits emitted equal the
// debits applied, and that no transfer is both credited and refunded. A
// read that fails (Postgres down) is counted and skipped; a run must have
// some that succeed.
func watchMoney(ctx context.Context, t *testing.T, s *stack, l *load, seed uint64) func() string {
	ctx, cancel := context.WithCancel(ctx)
	var (
		wg                            sync.WaitGroup
		reads, failed, inFlight, errs int
		most                          int64
	)
	start := time.Now()
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(seed, 28))
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			time.Sleep(time.Duration(200+rng.IntN(600)) * time.Millisecond)
			if conn == nil || conn.IsClosed() {
				var err error
				if conn, err = pgx.Connect(ctx, s.dbURL); err != nil {
					conn = nil
					failed++
					continue
				}
			}
			rctx, done := context.WithTimeout(ctx, 10*time.Second)
			m, err := readMoney(rctx, s, conn)
			done()
			if err != nil {
				if ctx.Err() == nil {
					failed++
				}
				conn.Close(context.Background())
				conn = nil
				continue
			}
			reads++
			var deposits, withdrawals, debits int64
			var unknown []string
			l.withSent(func(sent map[eventRef]command) {
				for _, r := range m.applied {
					c, ok := sent[r]
					switch {
					case !ok && r.key != "probe":
						unknown = append(unknown, fmt.Sprintf("%v of %s", r.id, r.key))
					case c.kind == "deposit":
						deposits += c.amount
					case c.kind == "withdraw":
						withdrawals += c.amount
					case c.kind == "transfer":
						debits += c.amount
					}
				}
			})
			at := time.Since(start).Seconds()
			if m.inFlight > 0 {
				inFlight++
				most = max(most, m.inFlight)
			}
			if len(unknown)+len(m.twice)+len(m.strays) > 0 || m.balances+m.inFlight != deposits-withdrawals || debits != m.credits {
				if errs++; errs <= 5 {
					t.Errorf("money read %d, at %.1fs: balances %d + in flight %d = %d, want deposits %d - withdrawals %d = %d; debits applied %d, credits emitted %d; applied events the load never sent: %v; transfers ended twice: %v; refunds of no credit: %v",
						reads, at, m.balances, m.inFlight, m.balances+m.inFlight, deposits, withdrawals, deposits-withdrawals,
						debits, m.credits, first(unknown), first(m.twice), first(m.strays))
				}
			}
		}
	}()
	var once sync.Once
	var summary string
	return func() string {
		once.Do(func() {
			cancel()
			wg.Wait()
			if reads == 0 {
				t.Errorf("no read of the money succeeded during the run (%d failed)", failed)
			}
			summary = fmt.Sprintf("; money conserved at %d reads during the run (%d with transfers in flight, up to %d; %d reads failed, Postgres away)", reads, inFlight, most, failed)
		})
		return summary
	}
}

// checkLedger is the ledger's check (target.check): every acknowledged
// transfer followed through the outbox and the processed events to its one
// end (its debit rejected, or its credit applied: settled, or its credit
// rejected and its refund applied: refunded; a transfer to an account
// never opened refunded), every outbox row one of theirs, the balances
// equal to the model the outcomes give, their sum the deposits minus the
// withdrawals; each transfer's GetCommandResult saying the same end; and
// the follow-ups on the topic in their origin partition's emit order, key
// by key.
func checkLedger(t *testing.T, s *stack, acked []command, outcomes []outcome) string {
	t.Helper()
	conn := s.connect(t)
	fs, err := readFollowUps(t.Context(), conn, s)
	if err != nil {
		t.Fatal(err)
	}
	byRef := map[eventRef]*followUp{}
	for i := range fs {
		if byRef[fs[i].eventRef] != nil {
			t.Errorf("two outbox rows of the follow-up %v of %s", fs[i].id, fs[i].key)
		}
		byRef[fs[i].eventRef] = &fs[i]
	}
	dom, ids := s.tg.dom, s.tg.dom.IDs()
	model := map[string]int64{} // accounts opened, with their balances
	used := map[eventRef]bool{}
	var (
		deposits, withdrawals                        int64
		transfers, rejectedDebits, bad               int
		settled, refunded, ghostsDebited, ghostsBack int
		ends                                         []transferEnd
	)
	fail := func(format string, args ...any) {
		if bad++; bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	const (
		stateRejected = ledgerv1.TransferState_TRANSFER_STATE_REJECTED
		stateSettled  = ledgerv1.TransferState_TRANSFER_STATE_SETTLED
		stateRefunded = ledgerv1.TransferState_TRANSFER_STATE_REFUNDED
	)
	for i, c := range acked {
		if c.kind != "transfer" {
			if outcomes[i] != applied {
				continue
			}
			switch c.kind {
			case "open":
				model[c.key] += 0
			case "deposit":
				model[c.key] += c.amount
				deposits += c.amount
			case "withdraw":
				model[c.key] -= c.amount
				withdrawals += c.amount
			}
			continue
		}
		transfers++
		debit := ids.EventID(c.requestID)
		creditRef := eventRef{dom.FollowUpEventID(debit, c.key, ledger.StepCredit), c.to}
		credit := byRef[creditRef]
		if outcomes[i] != applied {
			rejectedDebits++
			if credit != nil {
				fail("transfer %s (%s -> %s, %d): its debit rejected, yet it emitted a credit", c.requestID, c.key, c.to, c.amount)
			}
			ends = append(ends, transferEnd{c, stateRejected})
			continue
		}
		model[c.key] -= c.amount
		if strings.HasPrefix(c.to, ghostPrefix) {
			ghostsDebited++
		}
		if credit == nil || credit.name != ledger.StepCredit || credit.amount != c.amount {
			fail("transfer %s (%s -> %s, %d): its debit applied, its credit in the outbox %+v; want a credit of %d", c.requestID, c.key, c.to, c.amount, credit, c.amount)
			continue
		}
		used[creditRef] = true
		refundRef := eventRef{dom.FollowUpEventID(creditRef.id, c.to, ledger.StepRefund), c.key}
		refund := byRef[refundRef]
		switch credit.status {
		case applied:
			if refund != nil {
				fail("transfer %s (%s -> %s, %d): credited and refunded: it ended twice", c.requestID, c.key, c.to, c.amount)
				continue
			}
			model[c.to] += c.amount
			settled++
			ends = append(ends, transferEnd{c, stateSettled})
			if strings.HasPrefix(c.to, ghostPrefix) {
				fail("transfer %s credited %s, an account never opened", c.requestID, c.to)
			}
		case rejected:
			if refund == nil || refund.name != ledger.StepRefund || refund.amount != c.amount {
				fail("transfer %s (%s -> %s, %d): its credit rejected, its refund in the outbox %+v; want a refund of %d", c.requestID, c.key, c.to, c.amount, refund, c.amount)
				continue
			}
			used[refundRef] = true
			if refund.status != applied {
				fail("transfer %s (%s -> %s, %d): its refund has status %d, want applied: it never ended", c.requestID, c.key, c.to, c.amount, refund.status)
				continue
			}
			model[c.key] += c.amount
			refunded++
			ends = append(ends, transferEnd{c, stateRefunded})
			if strings.HasPrefix(c.to, ghostPrefix) {
				ghostsBack++
			}
		default:
			fail("transfer %s (%s -> %s, %d): its credit has status %d, want applied or rejected: it never ended", c.requestID, c.key, c.to, c.amount, credit.status)
		}
	}
	for _, f := range fs {
		if !used[f.eventRef] {
			fail("outbox row %d/%d %s (%v of %s, %d) is no step of an acknowledged transfer", f.partition, f.offset, f.name, f.id, f.key, f.amount)
		}
	}
	if ghostsDebited == 0 || ghostsBack != ghostsDebited {
		t.Errorf("%d transfers to accounts never opened were debited, %d refunded; want some, all refunded", ghostsDebited, ghostsBack)
	}
	got := readBalances(t, s, conn)
	if !maps.Equal(got, model) {
		t.Errorf("balances %v, want %v (the model from the recorded outcomes)", got, model)
	}
	var sum int64
	for _, b := range got {
		sum += b
	}
	if sum != deposits-withdrawals {
		t.Errorf("quiet: the balances sum to %d, want deposits %d - withdrawals %d = %d (no transfer in flight)", sum, deposits, withdrawals, deposits-withdrawals)
	}
	started := time.Now()
	checkTransferResults(t, s, ends)
	asked := time.Since(started)
	records, dups, cross := checkFollowUpOrder(t, s, fs)
	return fmt.Sprintf("%d accounts; %d transfers acknowledged: %d rejected at the debit, %d settled, %d refunded (%d of them to accounts never opened), GetCommandResult of each in %v; %d follow-ups emitted, %d records of them on the topic (%d duplicates), %d credits to another partition; the relay's produce requests refused %d times, unsent follow-ups piled up to %d",
		len(got), transfers, rejectedDebits, settled, refunded, ghostsBack, asked.Round(100*time.Millisecond), len(fs), records, dups, cross, s.relay.refused.Load(), s.relay.piled.Load())
}

// transferEnd is how an acknowledged transfer ended, by the projection.
type transferEnd struct {
	c     command
	state ledgerv1.TransferState
}

// checkTransferResults asks a server for each transfer's GetCommandResult
// (by its request ID and source account), four at a time: it must name the
// end the projection shows.
func checkTransferResults(t *testing.T, s *stack, ends []transferEnd) {
	t.Helper()
	cl := ledgerv1connect.NewLedgerServiceClient(httpClient, "http://"+s.serves[0].addr)
	var (
		mu   sync.Mutex
		bad  int
		next = make(chan transferEnd)
		wg   sync.WaitGroup
	)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range next {
				ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
				r, err := cl.GetCommandResult(ctx, connect.NewRequest(&ledgerv1.GetCommandResultRequest{
					Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: e.c.requestID}, AccountId: e.c.key}))
				cancel()
				if err == nil && r.Msg.GetTransferState() == e.state {
					continue
				}
				mu.Lock()
				if bad++; bad <= 5 {
					var got any = err
					if err == nil {
						got = r.Msg
					}
					t.Errorf("GetCommandResult of transfer %s (%s -> %s, %d): %v; want transfer state %v", e.c.requestID, e.c.key, e.c.to, e.c.amount, got, e.state)
				}
				mu.Unlock()
			}
		}()
	}
	for _, e := range ends {
		next <- e
	}
	close(next)
	wg.Wait()
	if bad > 0 {
		t.Errorf("%d of %d transfers' GetCommandResult did not say their end", bad, len(ends))
	}
}

// checkFollowUpOrder reads the whole topic and checks that every
// follow-up is on it, and that the follow-ups one origin partition emitted
// for one key are on the topic (first copies: a copy produced again after
// a lost mark is a duplicate the applier drops) in the order the partition
// emitted them (origin offset, then name), so they apply in that order. It
// returns how many follow-up records the topic holds, how many of them are
// duplicates, and how many credits went to another partition than their
// debit's.
func checkFollowUpOrder(t *testing.T, s *stack, fs []followUp) (records, dups, cross int) {
	t.Helper()
	type at struct {
		partition int32
		offset    int64
	}
	first := map[eventRef]at{}
	copies := map[eventRef]int{}
	for _, f := range fs {
		copies[f.eventRef] = 0
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.brokerAddr), kgo.ConsumeTopics(s.topic()), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), s.topic())
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatalf("list end offsets: %v", err)
	}
	left := map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) {
		if o.Offset > 0 {
			left[o.Partition] = o.Offset
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	for len(left) > 0 {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read the topic: %v; left: %v", err, left)
		}
		fetches.EachError(func(_ string, p int32, err error) { t.Logf("read partition %d: %v", p, err) })
		fetches.EachRecord(func(r *kgo.Record) {
			if end, ok := left[r.Partition]; ok && r.Offset >= end-1 {
				delete(left, r.Partition)
			}
			var id string
			for _, h := range r.Headers {
				if h.Key == "heed-event-id" {
					id = string(h.Value)
				}
			}
			u, err := uuid.Parse(id)
			if err != nil {
				return // not an envelope heed wrote
			}
			ref := eventRef{u, string(r.Key)}
			n, ok := copies[ref]
			if !ok {
				return
			}
			copies[ref] = n + 1
			records++
			if n == 0 {
				first[ref] = at{r.Partition, r.Offset}
			}
		})
	}
	type origin struct {
		partition int32
		key       string
	}
	emitted := map[origin][]followUp{}
	missing := 0
	for _, f := range fs {
		if copies[f.eventRef] == 0 {
			if missing++; missing <= 5 {
				t.Errorf("the follow-up %s %v of %s (outbox row %d/%d) is not on the topic", f.name, f.id, f.key, f.partition, f.offset)
			}
			continue
		}
		dups += copies[f.eventRef] - 1
		if f.name == ledger.StepCredit && first[f.eventRef].partition != f.partition {
			cross++
		}
		o := origin{f.partition, f.key}
		emitted[o] = append(emitted[o], f)
	}
	disorder := 0
	for o, list := range emitted {
		slices.SortFunc(list, func(a, b followUp) int {
			if a.offset != b.offset {
				return int(a.offset - b.offset)
			}
			return strings.Compare(a.name, b.name)
		})
		for i := 1; i < len(list); i++ {
			a, b := list[i-1], list[i]
			if first[a.eventRef].partition == first[b.eventRef].partition && first[a.eventRef].offset < first[b.eventRef].offset {
				continue
			}
			if disorder++; disorder <= 5 {
				t.Errorf("key %s: partition %d emitted %s %v (origin offset %d) before %s %v (origin offset %d), but the topic has them at %v and %v: out of order",
					o.key, o.partition, a.name, a.id, a.offset, b.name, b.id, b.offset, first[a.eventRef], first[b.eventRef])
			}
		}
	}
	if missing > 0 || disorder > 0 {
		t.Errorf("%d follow-ups never produced, %d pairs out of their origin's order", missing, disorder)
	}
	return records, dups, cross
}

// first is the first five of list, for a message.
func first(list []string) []string { return list[:min(len(list), 5)] }
