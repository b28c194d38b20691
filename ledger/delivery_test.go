package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/topic"
)

// A record delivered twice is applied once: a byte-for-byte copy written to
// the topic again, and the whole topic replayed after rewinding both the
// group's offsets and the applied positions.
func TestRecordConsumedTwice(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	app := p.startApplier(t)

	p.open(t, "open-f", "frank")
	p.open(t, "open-g", "grace")
	dep := p.deposit(t, "dep-f", "frank", 70)
	p.deposit(t, "dep-g", "grace", 30)
	p.waitApplied(t, dep.GetConsistencyToken())

	// Copy the deposit's record and write it again.
	orig := p.fetchRecord(t, token(t, dep.GetConsistencyToken()))
	dup := p.produceRaw(t, &kgo.Record{Key: orig.Key, Value: orig.Value, Headers: orig.Headers})[0]
	if dup.Partition != orig.Partition || dup.Offset <= orig.Offset {
		t.Fatalf("copy written at %d/%d, original at %d/%d", dup.Partition, dup.Offset, orig.Partition, orig.Offset)
	}
	last := p.deposit(t, "dep-f2", "frank", 5)
	if got := p.balance(t, "frank", last.GetConsistencyToken()); got != 75 {
		t.Errorf("frank's balance after a duplicated deposit of 70 and one of 5 = %d, want 75", got)
	}
	if s := app.Stats(); s.Duplicates != 1 || s.Applied != 5 {
		t.Errorf("stats = %+v, want 5 applied, 1 duplicate", s)
	}
	want := map[string]int64{"frank": 75, "grace": 30}
	if got := p.balances(t); !maps.Equal(got, want) {
		t.Fatalf("balances = %v, want %v", got, want)
	}

	// Replay: stop, rewind Kafka and the database positions to 0, restart.
	app.stop(t)
	ends := p.endOffsets(t)
	rewind := make(kadm.Offsets)
	for part := range ends {
		rewind.Add(kadm.Offset{Topic: p.topic, Partition: part, At: 0, LeaderEpoch: -1})
	}
	if err := kadm.NewClient(p.admin).CommitAllOffsets(t.Context(), p.group, rewind); err != nil {
		t.Fatalf("rewind group offsets: %v", err)
	}
	for part := range ends {
		if c := p.committed(t, part); c != 0 {
			t.Fatalf("partition %d committed offset %d after rewind, want 0", part, c)
		}
	}
	if _, err := p.pool.Exec(t.Context(), `UPDATE applied_positions SET next_offset = 0`); err != nil {
		t.Fatalf("rewind applied positions: %v", err)
	}
	results := p.count(t, `SELECT count(*) FROM processed_events`)

	replay := p.startApplier(t)
	testenv.Eventually(t, 20*time.Second, func() string {
		var behind int64
		for part, end := range ends {
			var next int64
			if err := p.pool.QueryRow(t.Context(), `SELECT next_offset FROM applied_positions WHERE topic = $1 AND partition = $2`, p.topic, part).Scan(&next); err != nil {
				return err.Error()
			}
			behind += end - next
		}
		if behind > 0 {
			return fmt.Sprintf("replay is %d records behind", behind)
		}
		// The stats count a batch once its COMMIT has answered, a moment
		// after the position moved in the database.
		if s := replay.Stats(); s.Applied+s.Duplicates < 6 {
			return fmt.Sprintf("replay stats %+v: not every committed batch counted yet", s)
		}
		return ""
	})
	if s := replay.Stats(); s.Applied != 0 || s.Duplicates != 6 {
		t.Errorf("replay stats = %+v, want 0 applied, 6 duplicates (every record of the topic)", s)
	}
	if got := p.balances(t); !maps.Equal(got, want) {
		t.Errorf("balances after replay = %v, want %v", got, want)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events`); n != results {
		t.Errorf("processed_events has %d rows after replay, want %d", n, results)
	}
	testenv.Eventually(t, 10*time.Second, func() string {
		for part, end := range ends {
			if c := p.committed(t, part); c != end {
				return fmt.Sprintf("partition %d committed offset %d, want %d", part, c, end)
			}
		}
		return ""
	})
}

// A batch whose transaction fails is rolled back, its offset is not
// committed, and after the failure clears it is applied exactly once.
func TestFailedTransactionRetried(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	app := p.startApplier(t)
	open := p.open(t, "open-h", "heidi")
	p.waitApplied(t, open.GetConsistencyToken())

	// search_path is the test schema, so the function and trigger land there.
	ddl := []string{
		`CREATE FUNCTION fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$`,
		`CREATE TRIGGER fail_writes BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION fail_writes()`,
	}
	for _, q := range ddl {
		if _, err := p.pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}

	dep := p.deposit(t, "dep-h", "heidi", 42)
	tok := token(t, dep.GetConsistencyToken())
	testenv.Eventually(t, 10*time.Second, func() string {
		if app.Stats().Retries == 0 {
			return "the applier has not retried the failing batch"
		}
		return ""
	})
	// Past the auto-commit interval (1s): a commit of the failed record would show.
	time.Sleep(1500 * time.Millisecond)
	if c := p.committed(t, tok.Partition); c > tok.Offset {
		t.Fatalf("committed offset %d is past the failed record at %d", c, tok.Offset)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events WHERE event_id = $1`, envelope.EventID("dep-h")); n != 0 {
		t.Fatalf("the failed batch left %d command results", n)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events`); n != 1 {
		t.Fatalf("processed_events has %d rows while the deposit fails, want 1 (the open)", n)
	}

	if _, err := p.pool.Exec(t.Context(), `DROP TRIGGER fail_writes ON accounts`); err != nil {
		t.Fatalf("drop trigger: %v", err)
	}
	if got := p.balance(t, "heidi", dep.GetConsistencyToken()); got != 42 {
		t.Errorf("balance after recovery = %d, want 42", got)
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events WHERE event_id = $1`, envelope.EventID("dep-h")); n != 1 {
		t.Errorf("processed_events rows for the deposit = %d, want 1", n)
	}
	if s := app.Stats(); s.Applied != 2 || s.Duplicates != 0 {
		t.Errorf("stats = %+v, want 2 applied, no duplicates", s)
	}
	testenv.Eventually(t, 10*time.Second, func() string {
		if c := p.committed(t, tok.Partition); c != tok.Offset+1 {
			return fmt.Sprintf("committed offset %d, want %d (just past the deposit)", c, tok.Offset+1)
		}
		return ""
	})
}

// Records that can never apply are quarantined with their bytes and the
// reason. The key's later events are parked behind them, in log order, while
// the partition moves on to the other keys' records after them.
func TestPoisonRecordsQuarantined(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	app := p.startApplier(t)
	const key = "ivan"
	open := token(t, p.open(t, "open-i", key).GetConsistencyToken())
	// Another account on ivan's partition.
	other := ""
	for i := 0; other == ""; i++ {
		name := fmt.Sprint("judy-", i)
		if token(t, p.open(t, "open-"+name, name).GetConsistencyToken()).Partition == open.Partition {
			other = name
		}
	}

	envelopeOf := func(typ string, payload []byte) []byte {
		env := &envelopev1.Envelope{
			EventId:     envelope.EventID("poison-" + typ).String(),
			Type:        typ,
			RequestId:   "poison-" + typ,
			AggregateId: key,
			Payload:     &anypb.Any{TypeUrl: "type.googleapis.com/" + typ, Value: payload},
		}
		b, err := proto.Marshal(env)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	negative, err := proto.Marshal(&ledgerv1.FundsDeposited{AccountId: key, Amount: -5})
	if err != nil {
		t.Fatal(err)
	}
	poison := []struct {
		value  []byte
		reason string
	}{
		{[]byte("\xff\xfe not a protobuf"), "undecodable envelope"},
		{envelopeOf("heed.ledger.v1.Bogus", []byte{}), `unknown event type "heed.ledger.v1.Bogus"`},
		{envelopeOf("heed.ledger.v1.FundsDeposited", negative), "amount -5 must be greater than 0"},
	}
	recs := make([]*kgo.Record, len(poison))
	for i, pr := range poison {
		recs[i] = &kgo.Record{Key: []byte(key), Value: pr.value}
	}
	p.produceRaw(t, recs...)
	dep := p.deposit(t, "dep-i", key, 9)
	tok := token(t, dep.GetConsistencyToken())
	for _, r := range recs {
		if r.Partition != tok.Partition || r.Offset >= tok.Offset {
			t.Fatalf("poison record at %d/%d is not before the deposit at %d/%d", r.Partition, r.Offset, tok.Partition, tok.Offset)
		}
	}
	later := p.deposit(t, "dep-"+other, other, 7)
	if got := p.balance(t, other, later.GetConsistencyToken()); got != 7 {
		t.Errorf("balance of %s, on the poisoned partition after the poison records = %d, want 7", other, got)
	}
	if got := p.balance(t, key, dep.GetConsistencyToken()); got != 0 {
		t.Errorf("balance of %s after poison records and a parked deposit of 9 = %d, want 0", key, got)
	}
	for i, pr := range poison {
		var (
			kind, reason string
			value        []byte
		)
		err := p.pool.QueryRow(t.Context(), `SELECT kind, reason, value FROM quarantine WHERE topic = $1 AND partition = $2 AND "offset" = $3`,
			p.topic, recs[i].Partition, recs[i].Offset).Scan(&kind, &reason, &value)
		if err != nil {
			t.Errorf("poison record %d (%s): %v", i, pr.reason, err)
			continue
		}
		if kind != "poison" || !strings.Contains(reason, pr.reason) || string(value) != string(pr.value) {
			t.Errorf("poison record %d: kind %s reason %q (value kept: %t), want poison with %q", i, kind, reason, string(value) == string(pr.value), pr.reason)
		}
	}
	var kind string
	if err := p.pool.QueryRow(t.Context(), `SELECT kind FROM quarantine WHERE topic = $1 AND partition = $2 AND "offset" = $3`,
		p.topic, tok.Partition, tok.Offset).Scan(&kind); err != nil || kind != "parked" {
		t.Errorf("the deposit after the poison records: quarantine kind %q (%v), want parked", kind, err)
	}
	if s := app.Stats(); s.Quarantined != 3 || s.Parked != 1 {
		t.Errorf("stats = %+v, want 3 quarantined, 1 parked", s)
	}
}

// Two members of one group share a 4-partition topic; one stops while
// commands keep coming. Every command is applied exactly once.
func TestMemberStopsMidRun(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 4})
	a := p.startApplier(t)
	b := p.startApplier(t)

	p.waitGroupBalanced(t, 2)

	const accounts, deposits = 8, 12
	var wg sync.WaitGroup
	send := func(round int) {
		for i := range accounts {
			wg.Go(func() {
				acct := fmt.Sprintf("acct-%d", i)
				req := fmt.Sprintf("dep-%d-%d", i, round)
				if _, _, err := p.pub.Publish(t.Context(), acct, req, &ledgerv1.FundsDeposited{AccountId: acct, Amount: int64(round + 1)}); err != nil {
					t.Errorf("publish %s: %v", req, err)
				}
			})
		}
		wg.Wait()
	}
	for i := range accounts {
		acct := fmt.Sprintf("acct-%d", i)
		if _, _, err := p.pub.Publish(t.Context(), acct, "open-"+acct, &ledgerv1.AccountOpened{AccountId: acct}); err != nil {
			t.Fatalf("publish open: %v", err)
		}
	}
	for round := range deposits / 2 {
		send(round)
	}
	testenv.Eventually(t, 20*time.Second, func() string {
		if a.Stats().Applied == 0 || b.Stats().Applied == 0 {
			return fmt.Sprintf("both members should be applying: %+v / %+v", a.Stats(), b.Stats())
		}
		return ""
	})
	stopped := make(chan struct{})
	go func() { a.stop(t); close(stopped) }()
	for round := deposits / 2; round < deposits; round++ {
		send(round)
	}
	<-stopped

	ends := p.endOffsets(t)
	testenv.Eventually(t, 30*time.Second, func() string {
		for part, end := range ends {
			var next int64
			if err := p.pool.QueryRow(t.Context(), `SELECT next_offset FROM applied_positions WHERE topic = $1 AND partition = $2`, p.topic, part).Scan(&next); err != nil {
				return fmt.Sprintf("partition %d: %v", part, err)
			}
			if next != end {
				return fmt.Sprintf("partition %d applied up to %d of %d", part, next, end)
			}
		}
		return ""
	})
	want := make(map[string]int64)
	for i := range accounts {
		want[fmt.Sprintf("acct-%d", i)] = deposits * (deposits + 1) / 2
	}
	if got := p.balances(t); !maps.Equal(got, want) {
		t.Errorf("balances = %v, want %v", got, want)
	}
	total := int64(accounts * (deposits + 1))
	if n := p.count(t, `SELECT count(*) FROM processed_events WHERE status = 2`); n != total {
		t.Errorf("%d applied command results, want %d", n, total)
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Applied+sb.Applied != total {
		t.Errorf("members applied %d + %d events, want %d in all (stats %+v / %+v)", sa.Applied, sb.Applied, total, sa, sb)
	}
	t.Logf("member a: %+v; member b: %+v", sa, sb)
}

// waitGroupBalanced waits until the group is stable with members members,
// each assigned at least one partition and all partitions assigned.
func (p *pipeline) waitGroupBalanced(t *testing.T, members int) {
	t.Helper()
	adm := kadm.NewClient(p.admin)
	testenv.Eventually(t, 20*time.Second, func() string {
		groups, err := adm.DescribeGroups(t.Context(), p.group)
		if err != nil {
			return err.Error()
		}
		g := groups[p.group]
		if g.Err != nil {
			return g.Err.Error()
		}
		if g.State != "Stable" || len(g.Members) != members {
			return fmt.Sprintf("group %s with %d members, want Stable with %d", g.State, len(g.Members), members)
		}
		assigned := 0
		for _, m := range g.Members {
			ca, ok := m.Assigned.AsConsumer()
			n := 0
			if ok {
				for _, tp := range ca.Topics {
					n += len(tp.Partitions)
				}
			}
			if n == 0 {
				return fmt.Sprintf("member %s has no partitions", m.MemberID)
			}
			assigned += n
		}
		if want := len(p.endOffsets(t)); assigned != want {
			return fmt.Sprintf("%d partitions assigned, want %d", assigned, want)
		}
		return ""
	})
}

// When another member moves a partition's applied position while this one
// holds records it fetched past that position (the compare-and-set then
// fails), this member goes on from the new position without skipping any
// record after it.
func TestPositionMovedByAnotherMember(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	const key, deposits = "judy", 99
	if _, _, err := p.pub.Publish(t.Context(), key, "open-j", &ledgerv1.AccountOpened{AccountId: key}); err != nil {
		t.Fatalf("publish open: %v", err)
	}
	var wg sync.WaitGroup
	for i := range deposits {
		wg.Go(func() {
			if _, _, err := p.pub.Publish(t.Context(), key, fmt.Sprint("dep-j-", i), &ledgerv1.FundsDeposited{AccountId: key, Amount: 1}); err != nil {
				t.Errorf("publish deposit: %v", err)
			}
		})
	}
	wg.Wait()

	// Hold the first batch (offsets 0..15) failing while the applier fetches the rest.
	for _, q := range []string{
		`CREATE FUNCTION fail_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$`,
		`CREATE TRIGGER fail_writes BEFORE INSERT OR UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION fail_writes()`,
	} {
		if _, err := p.pool.Exec(t.Context(), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	app := p.startApplier(t)
	testenv.Eventually(t, 10*time.Second, func() string {
		if app.Stats().Retries < 2 {
			return "the first batch has not failed twice"
		}
		return ""
	})
	// Another member applied offset 0 (the open) and moved the position to 1.
	if _, err := p.pool.Exec(t.Context(), `DROP TRIGGER fail_writes ON accounts`); err != nil {
		t.Fatalf("drop trigger: %v", err)
	}
	if _, err := p.pool.Exec(t.Context(), `WITH pos AS (UPDATE applied_positions SET next_offset = 1 WHERE next_offset = 0 RETURNING 1)
INSERT INTO accounts (account_id, balance) SELECT $1, 0 FROM pos`, key); err != nil {
		t.Fatalf("move position: %v", err)
	}
	last := p.deposit(t, "dep-j-last", key, 1000)
	if got := p.balance(t, key, last.GetConsistencyToken()); got != deposits+1000 {
		t.Errorf("balance = %d, want %d: records after the moved position were skipped", got, deposits+1000)
	}
	if s := app.Stats(); s.Stale == 0 || s.Applied != deposits+1 {
		t.Errorf("stats = %+v, want a stale batch and %d applied", s, deposits+1)
	}
}

// TestDatabaseAheadOfTopic: a database whose applied position lies beyond the
// topic's end (the broker lost events the projection holds) keeps the applier
// from starting: new events written at the offsets it holds as applied would
// be skipped for good.
func TestDatabaseAheadOfTopic(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	first := p.startApplier(t)
	open := p.open(t, "open-ahead", "ivan")
	p.waitApplied(t, open.GetConsistencyToken())
	first.stop(t)

	tok := token(t, open.GetConsistencyToken())
	if _, err := p.pool.Exec(t.Context(), `UPDATE applied_positions SET next_offset = 1000 WHERE topic = $1 AND partition = $2`,
		p.topic, tok.Partition); err != nil {
		t.Fatalf("move position: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := p.newApplier(t).Run(ctx)
	if !errors.Is(err, topic.ErrAheadOfTopic) || !strings.Contains(err.Error(), fmt.Sprintf("partition %d", tok.Partition)) {
		t.Fatalf("Run with a position beyond the topic's end: %v, want topic.ErrAheadOfTopic naming partition %d", err, tok.Partition)
	}
}

// A partition resumes from the applied position in Postgres, not from the
// group's committed offset: with the positions rewound and the committed
// offsets left at the end of the topic, a new applier reads the whole topic
// again and finds every record a duplicate. An applier that trusted the
// committed offsets would read nothing.
func TestResumeFromAppliedPositionNotCommittedOffset(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2})
	app := p.startApplier(t)
	p.open(t, "open-h", "hana")
	p.open(t, "open-i", "ines")
	p.deposit(t, "dep-h", "hana", 40)
	last := p.deposit(t, "dep-i", "ines", 2)
	p.waitApplied(t, last.GetConsistencyToken())
	app.stop(t)
	// The group's offsets at the end of the topic (set here: the applier's
	// own commit at shutdown is best effort), the positions back at 0.
	ends := p.endOffsets(t)
	var records int64
	atEnd := make(kadm.Offsets)
	for part, end := range ends {
		records += end
		atEnd.Add(kadm.Offset{Topic: p.topic, Partition: part, At: end, LeaderEpoch: -1})
	}
	if err := kadm.NewClient(p.admin).CommitAllOffsets(t.Context(), p.group, atEnd); err != nil {
		t.Fatalf("commit the group's offsets at the end: %v", err)
	}
	for part, end := range ends {
		if c := p.committed(t, part); c != end {
			t.Fatalf("partition %d committed offset %d, want %d (the end)", part, c, end)
		}
	}
	if _, err := p.pool.Exec(t.Context(), `UPDATE applied_positions SET next_offset = 0`); err != nil {
		t.Fatalf("rewind applied positions: %v", err)
	}

	replay := p.startApplier(t)
	testenv.Eventually(t, 20*time.Second, func() string {
		if s := replay.Stats(); s.Duplicates != records {
			return fmt.Sprintf("replay stats %+v, want %d duplicates (every record, re-read from the applied position 0)", s, records)
		}
		return ""
	})
	if s := replay.Stats(); s.Applied != 0 {
		t.Errorf("replay stats = %+v, want nothing applied", s)
	}
	if got, want := p.balances(t), map[string]int64{"hana": 40, "ines": 2}; !maps.Equal(got, want) {
		t.Errorf("balances = %v, want %v", got, want)
	}
}

// Events of one batch apply in log order around a poison record of another
// account: open, junk, deposit 10, withdraw 4 leaves 6 (the withdrawal after
// the deposit, both after the open). Applying the events after the poison
// record before the ones before it would reject the deposit and the
// withdrawal.
func TestBatchOrderAroundPoison(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	const acct = "pia"
	recs := []*kgo.Record{
		rawRecord(t, "open-p", acct, &ledgerv1.AccountOpened{AccountId: acct}),
		{Key: []byte("zed"), Value: []byte("junk, not an envelope")},
		rawDeposit(t, "dep-p", acct, 10),
		rawRecord(t, "wd-p", acct, &ledgerv1.FundsWithdrawn{AccountId: acct, Amount: 4}),
	}
	p.produceRaw(t, recs...) // one partition, produced before the applier starts: one batch
	app := p.startApplier(t)
	testenv.Eventually(t, 20*time.Second, func() string {
		if s := app.Stats(); s.Applied != 3 || s.Quarantined != 1 {
			return fmt.Sprintf("stats %+v, want 3 applied, 1 quarantined", s)
		}
		return ""
	})
	if s := app.Stats(); s.Batches != 1 {
		t.Errorf("the records took %d batches, want one: the order within a batch is what this test checks", s.Batches)
	}
	if got, want := p.balances(t), map[string]int64{acct: 6}; !maps.Equal(got, want) {
		t.Errorf("balances = %v, want %v", got, want)
	}
	for _, id := range []string{"open-p", "dep-p", "wd-p"} {
		if r := p.result(t, id, ""); r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED {
			t.Errorf("%s: %v %q, want applied", id, r.GetStatus(), r.GetReason())
		}
	}
}

// rawRecord is msg for account as a record written around ingest.
func rawRecord(t *testing.T, requestID, account string, msg proto.Message) *kgo.Record {
	t.Helper()
	payload, err := anypb.New(msg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := proto.Marshal(&envelopev1.Envelope{
		EventId: envelope.EventID(requestID).String(), Type: string(msg.ProtoReflect().Descriptor().FullName()),
		RequestId: requestID, AggregateId: account, Payload: payload,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &kgo.Record{Key: []byte(account), Value: v}
}
