package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
)

// TestRetentionKeepsWhatParkedRecordsNeed is issue 26's hole 1, through the
// binaries: an account's deposit, a record that cannot apply on its key and
// a retry of the deposit parked behind it, all written 3 hours ago, then a
// record written now on the same partition; heed apply --retention 1h
// prunes. The deposit's processed row must stay while its retry waits: its
// command reads APPLIED (not PARKED), and once the key is released, by
// heed quarantine drop of the junk (ret1) or by heed quarantine redrive after
// a fix (ret2), the retry is a duplicate: applied once. With a cutoff that
// looks at the partitions' record times alone (or today's, at lagging
// partitions) the rows go and the retry is applied twice.
func TestRetentionKeepsWhatParkedRecordsNeed(t *testing.T) {
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin)
	ctx := t.Context()
	pool, err := schema.Connect(ctx, ps.dbURL, schema.Default, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// ret2's big deposit fails in Postgres until this constraint goes: the
	// fix a re-drive waits for.
	if _, err := pool.Exec(ctx, `ALTER TABLE accounts ADD CONSTRAINT test_small CHECK (balance < 1000000)`); err != nil {
		t.Fatal(err)
	}
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen}, ps.common...)...)

	cl, err := kgo.NewClient(kgo.SeedBrokers(ps.brokerAddr), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ago := time.Now().Add(-3 * time.Hour)
	var offsets = map[string]int64{}
	produce := func(name string, at time.Time, key string, value []byte) {
		t.Helper()
		r := &kgo.Record{Key: []byte(key), Value: value, Timestamp: at, Partition: 0}
		if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
			t.Fatalf("produce %s: %v", name, err)
		}
		offsets[name] = r.Offset
	}
	event := func(rid, account string, msg proto.Message) []byte {
		t.Helper()
		env, err := ingest.NewEnvelope(account, rid, msg)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ingest.NewRecord(env)
		if err != nil {
			t.Fatal(err)
		}
		return r.Value
	}
	for _, acct := range []string{"ret1", "ret2"} {
		dep := event(acct+"-d1", acct, &ledgerv1.FundsDeposited{AccountId: acct, Amount: 10})
		produce(acct+"-open", ago, acct, event(acct+"-open", acct, &ledgerv1.AccountOpened{AccountId: acct}))
		produce(acct+"-d1", ago, acct, dep)
		if acct == "ret1" {
			produce("junk", ago, acct, []byte("not an envelope"))
		} else {
			produce("big", ago, acct, event(acct+"-big", acct, &ledgerv1.FundsDeposited{AccountId: acct, Amount: 5000000}))
		}
		produce(acct+"-retry", ago, acct, dep)
	}
	produce("later", time.Now(), "later", event("later-open", "later", &ledgerv1.AccountOpened{AccountId: "later"}))

	startHeedLog(t, bin, "partitions assigned", append([]string{"apply", "--retention", "1h", "--retention-interval", "200ms"}, ps.common...)...)
	client := ledgerClient(ps.listen)
	applied := func() string {
		var n int64
		err := pool.QueryRow(ctx, `SELECT next_offset FROM applied_positions WHERE partition = 0`).Scan(&n)
		if err != nil || n <= offsets["later"] {
			return fmt.Sprintf("partition 0 applied up to %d (%v), want past %d", n, err, offsets["later"])
		}
		return ""
	}
	testenv.Eventually(t, 30*time.Second, applied)
	since := time.Now()
	testenv.Eventually(t, 30*time.Second, func() string {
		var ran time.Time
		if err := pool.QueryRow(ctx, `SELECT ran_at FROM heed_retention`).Scan(&ran); err != nil || ran.Before(since) {
			return fmt.Sprintf("the pruner has not run since the records were applied (%v, %v)", ran, err)
		}
		return ""
	})

	for _, acct := range []string{"ret1", "ret2"} {
		res, err := client.GetCommandResult(ctx, connect.NewRequest(&ledgerv1.GetCommandResultRequest{
			Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: acct + "-d1"}, AccountId: acct}))
		if err != nil {
			t.Fatalf("GetCommandResult %s-d1: %v", acct, err)
		}
		if res.Msg.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_APPLIED {
			t.Errorf("%s-d1, applied, with its retry parked, after pruning: %v %q, want APPLIED", acct, res.Msg.GetStatus(), res.Msg.GetReason())
		}
	}

	db := append([]string{"--partition", "0"}, ps.common...)
	out := runTool(t, time.Minute, false, bin, append([]string{"quarantine", "drop", "--reason", "junk", "--offset", fmt.Sprint(offsets["junk"])}, db...)...)
	if !strings.Contains(out, "0 applied, 1 duplicates") {
		t.Errorf("quarantine drop of ret1's junk:\n%s\nwant the parked retry found a duplicate: 0 applied, 1 duplicates", out)
	}
	if _, err := pool.Exec(ctx, `ALTER TABLE accounts DROP CONSTRAINT test_small`); err != nil {
		t.Fatal(err)
	}
	out = runTool(t, time.Minute, false, bin, append([]string{"quarantine", "redrive", "--offset", fmt.Sprint(offsets["big"])}, db...)...)
	if !strings.Contains(out, "1 applied, 1 duplicates") {
		t.Errorf("quarantine redrive of ret2's big deposit after the fix:\n%s\nwant it applied and the parked retry a duplicate: 1 applied, 1 duplicates", out)
	}
	for acct, want := range map[string]int64{"ret1": 10, "ret2": 5000010} {
		if got := balance(t, client, acct, ""); got != want {
			t.Errorf("%s's balance %d, want %d: the retry of its deposit was applied again", acct, got, want)
		}
	}
}

// TestLateRetryLiveEqualsRebuild is issue 26's hole 2, through the binaries:
// a deposit written 3 hours ago and retried now through serve, past the
// one-hour window, is a new command, applied again (20): live, and in the
// replay of heed rebuild --verify, which reports no difference. Once without
// pruning (carl), once after apply pruned the deposit's row (dora).
func TestLateRetryLiveEqualsRebuild(t *testing.T) {
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin)
	ctx := t.Context()
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen}, ps.common...)...)
	client := ledgerClient(ps.listen)
	cl, err := kgo.NewClient(kgo.SeedBrokers(ps.brokerAddr), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pool, err := schema.Connect(ctx, ps.dbURL, schema.Default, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// written3hAgo writes account's open and deposit d1 of 10, 3 hours ago,
	// where serve would have, and returns their partition.
	written3hAgo := func(account string) int32 {
		t.Helper()
		var part int32
		for i, msg := range []proto.Message{&ledgerv1.AccountOpened{AccountId: account}, &ledgerv1.FundsDeposited{AccountId: account, Amount: 10}} {
			env, err := ingest.NewEnvelope(account, fmt.Sprintf("%s-%d", account, i), msg)
			if err != nil {
				t.Fatal(err)
			}
			r, err := ingest.NewRecord(env)
			if err != nil {
				t.Fatal(err)
			}
			r.Timestamp = time.Now().Add(-3 * time.Hour)
			if err := cl.ProduceSync(ctx, r).FirstErr(); err != nil {
				t.Fatal(err)
			}
			part = r.Partition
		}
		return part
	}
	// fill sends commands now until one lands on partition part, so that
	// its record time is now, and waits until it is applied.
	fill := func(name string, part int32) {
		t.Helper()
		for i := 0; ; i++ {
			id := fmt.Sprintf("%s-fill-%d", name, i)
			res, err := client.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: id, AccountId: id}))
			if err != nil {
				t.Fatal(err)
			}
			tok := res.Msg.GetConsistencyToken()
			if p, err := consistency.Parse(tok); err == nil && p.Partition == part {
				balance(t, client, id, tok)
				return
			}
			if i > 200 {
				t.Fatalf("no command landed on partition %d", part)
			}
		}
	}
	retry := func(account string) {
		t.Helper()
		res, err := client.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: account + "-1", AccountId: account, Amount: 10}))
		if err != nil {
			t.Fatal(err)
		}
		if got := balance(t, client, account, res.Msg.GetConsistencyToken()); got != 20 {
			t.Errorf("%s's balance %d after the deposit's retry 3 h after it, past the 1h window: want 20 (a new command)", account, got)
		}
	}
	verify := func(when string) {
		t.Helper()
		out := runTool(t, 2*time.Minute, false, bin, append([]string{"rebuild", "--verify"}, ps.common...)...)
		if !strings.Contains(out, "verified: heed_rebuild equals heed at positions") {
			t.Errorf("heed rebuild --verify %s:\n%s", when, out)
		}
	}

	// Both accounts' records come first on their partitions: their
	// record times are 3 hours ago.
	carl, dora := written3hAgo("carl"), written3hAgo("dora")
	apply := startHeedLog(t, bin, "partitions assigned", append([]string{"apply", "--retention", "1h", "--retention-interval", "1h"}, ps.common...)...)
	fill("carl", carl)
	retry("carl")
	verify("without pruning")

	apply.interrupt(t)
	startHeedLog(t, bin, "partitions assigned", append([]string{"apply", "--retention", "1h", "--retention-interval", "200ms"}, ps.common...)...)
	fill("dora", dora)
	testenv.Eventually(t, 30*time.Second, func() string {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM processed_events WHERE aggregate = 'dora'`).Scan(&n); err != nil || n != 0 {
			var state string
			_ = pool.QueryRow(ctx, `SELECT string_agg(partition || ':' || next_offset || '@' || coalesce(record_time::text, 'null'), ' ') || ' / ' || coalesce((SELECT cutoff::text FROM heed_retention), 'never') FROM applied_positions`).Scan(&state)
			return fmt.Sprintf("dora's rows not pruned yet (%d, %v); positions and cutoff: %s", n, err, state)
		}
		return ""
	})
	retry("dora")
	verify("after pruning")

	// The window is the projection's: an applier with another refuses.
	out := runTool(t, time.Minute, true, bin, append([]string{"apply", "--retention", "2h"}, ps.common...)...)
	if !strings.Contains(out, "the projection's is 1h0m0s, this one 2h0m0s") || !strings.Contains(out, "start with the projection's --retention") {
		t.Errorf("heed apply --retention 2h on a projection built with 1h:\n%s\nwant a refusal naming both and what to change", out)
	}
}
