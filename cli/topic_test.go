package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

// The reproduction: heed dev runs against a database, then a second
// heed dev with another --data-dir (a fresh broker, as after rm -rf .heed)
// against the same database. It must refuse to start, saying why and what to
// do, instead of acknowledging commands that the projection would skip.
func TestDevRefusesAnotherBroker(t *testing.T) {
	dbURL := testenv.PostgresURL(t)
	first := freeDevAddrs(t)
	runDev(t, devArgs(first, t.TempDir(), dbURL)...)
	c := ledgerClient(first.listen)
	open, err := c.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "open-tess", AccountId: "tess"}))
	if err != nil {
		t.Fatal(err)
	}
	balance(t, c, "tess", open.Msg.GetConsistencyToken())

	ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a guard against a start that does not refuse
	defer cancel()
	var stdout, stderr syncBuffer
	code := run(ctx, devArgs(freeDevAddrs(t), t.TempDir(), dbURL), &stdout, &stderr)
	if code != 1 || !strings.Contains(stderr.String(), "refusing to start on schema heed") || !strings.Contains(stderr.String(), "another incarnation") ||
		!strings.Contains(stderr.String(), "Restore the broker's data") {
		t.Errorf("heed dev on a fresh broker with the old projection: exit %d, stderr:\n%s\nwant exit 1 refusing, naming the fix", code, stderr.String())
	}
	if strings.Contains(stdout.String(), "heed dev is running") {
		t.Errorf("heed dev printed its banner before refusing:\n%s", stdout.String())
	}
}

// Partitions added to the topic while heed runs: commands are refused within
// a few seconds (keys would move to other partitions), a record a foreign
// producer writes to a new partition is held, and heed topic confirm-partitions
// (once the old partitions are drained) lets commands in again, hashed over
// the new count, and the held record applies.
func TestPartitionsGrowWhileRunning(t *testing.T) {
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	runDev(t, append(devArgs(addrs, t.TempDir(), dbURL), "--partitions", "2")...)
	ctx := t.Context()
	c := ledgerClient(addrs.listen)
	for _, acct := range []string{"uma", "vic"} {
		open, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "open-" + acct, AccountId: acct}))
		if err != nil {
			t.Fatal(err)
		}
		balance(t, c, acct, open.Msg.GetConsistencyToken())
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs.broker), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if _, err := kadm.NewClient(cl).CreatePartitions(ctx, 2, defaultTopic); err != nil {
		t.Fatal(err)
	}
	// Until the server's guard notices (within its 2s interval), a command
	// is still accepted, hashed over the old count: into an old partition.
	early := int64(0)
	testenv.Eventually(t, 20*time.Second, func() string {
		res, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "dep-early", AccountId: "uma", Amount: 1}))
		if err == nil {
			early = 1
			if tok := res.Msg.GetConsistencyToken(); tokenPartition(t, tok) >= 2 {
				t.Errorf("a deposit accepted after the topic grew went to partition %d, want one of the first 2", tokenPartition(t, tok))
			}
		}
		if connect.CodeOf(err) != connect.CodeUnavailable || !strings.Contains(err.Error(), "partition count changed") {
			return fmt.Sprintf("Deposit after the topic grew: %v, want unavailable saying the partition count changed", err)
		}
		return ""
	})
	env, err := ingest.NewEnvelope("vic", "dep-foreign", &ledgerv1.FundsDeposited{AccountId: "vic", Amount: 40})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := ingest.NewRecord(env)
	if err != nil {
		t.Fatal(err)
	}
	foreign.Partition = 3
	if err := cl.ProduceSync(ctx, foreign).FirstErr(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // the applier had time to apply it, were it not held
	if got := balance(t, c, "vic", ""); got != 0 {
		t.Fatalf("vic's balance with the deposit in a new partition = %d, want 0 (held until confirmed)", got)
	}

	code, out, errOut := runOnce(t, "topic", "confirm-partitions", "--brokers", addrs.broker, "--database-url", dbURL, "--fence", "5s", "--timeout", "1m")
	if code != 0 || !strings.Contains(out, "4 partitions") {
		t.Fatalf("heed topic confirm-partitions: exit %d\n%s%s", code, out, errOut)
	}
	var dep *connect.Response[ledgerv1.DepositResponse]
	testenv.Eventually(t, 20*time.Second, func() string {
		dep, err = c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "dep-after", AccountId: "uma", Amount: 5}))
		if err != nil {
			return fmt.Sprintf("Deposit after confirming: %v", err)
		}
		return ""
	})
	if got := balance(t, c, "uma", dep.Msg.GetConsistencyToken()); got != 5+early {
		t.Errorf("uma's balance = %d, want %d (refused deposits never written)", got, 5+early)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if got := balance(t, c, "vic", ""); got != 40 {
			return fmt.Sprintf("vic's balance = %d, want 40 once the new partition is confirmed", got)
		}
		return ""
	})
	code, out, _ = runOnce(t, "topic", "show", "--brokers", addrs.broker, "--database-url", dbURL)
	if code != 0 || !strings.Contains(out, "match") || strings.Contains(out, "MISMATCH") {
		t.Errorf("heed topic show after confirming: exit %d\n%s", code, out)
	}
}

// tokenPartition is the partition a consistency token names.
func tokenPartition(t *testing.T, token string) int32 {
	t.Helper()
	tok, err := consistency.Parse(token)
	if err != nil {
		t.Fatal(err)
	}
	return tok.Partition
}
