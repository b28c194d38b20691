package cli

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestDevRestartKeepsState stops the built binary's `heed dev` with SIGINT
// and starts it again on the same data dir: the account and the topic's
// records survive, and the restarted applier applies a new deposit once
// without applying the old events again.
func TestDevRestartKeepsState(t *testing.T) {
	d := startBuiltDev(t, "open-acct", "acct")
	bin, addrs, args, c, first := d.bin, d.addrs, d.args, d.client, d.first
	ctx := t.Context()
	dep, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "deposit-1", AccountId: "acct", Amount: 100}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	if got := balance(t, c, "acct", dep.Msg.GetConsistencyToken()); got != 100 {
		t.Fatalf("balance before restart = %d, want 100", got)
	}
	first.interrupt(t)

	second := startDev(t, bin, args...)
	if got := balance(t, c, "acct", ""); got != 100 {
		t.Errorf("balance after restart = %d, want 100", got)
	}
	if got := topicRecords(t, addrs.broker); got != 2 {
		t.Errorf("topic %s holds %d records after restart, want 2 (OpenAccount, Deposit)", defaultTopic, got)
	}

	dep2, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "deposit-2", AccountId: "acct", Amount: 50}))
	if err != nil {
		t.Fatalf("Deposit after restart: %v", err)
	}
	if got := balance(t, c, "acct", dep2.Msg.GetConsistencyToken()); got != 150 {
		t.Errorf("balance after a new deposit = %d, want 150 (100 + 50, old events applied once)", got)
	}
	// A retry of the first deposit after the restart is the same event, applied once.
	retry, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "deposit-1", AccountId: "acct", Amount: 100}))
	if err != nil {
		t.Fatalf("retried Deposit: %v", err)
	}
	if retry.Msg.GetEventId() != dep.Msg.GetEventId() {
		t.Errorf("retried deposit event ID = %s, want the first one's %s", retry.Msg.GetEventId(), dep.Msg.GetEventId())
	}
	if got := balance(t, c, "acct", retry.Msg.GetConsistencyToken()); got != 150 {
		t.Errorf("balance after a retried deposit = %d, want 150", got)
	}
	if got := topicRecords(t, addrs.broker); got != 4 {
		t.Errorf("topic holds %d records, want 4", got)
	}
	second.interrupt(t)
}

// topicRecords sums the end offsets of heed's topic on the broker at addr.
func topicRecords(tb testing.TB, addr string) int64 {
	tb.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr))
	if err != nil {
		tb.Fatalf("kafka client: %v", err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(tb.Context(), defaultTopic)
	if err != nil {
		tb.Fatalf("list end offsets of %s: %v", defaultTopic, err)
	}
	if err := ends.Error(); err != nil {
		tb.Fatalf("list end offsets of %s: %v", defaultTopic, err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// TestDevExternalClients drives heed dev (in-process) with grpcurl and buf
// curl the way a user runs them: reflection, a command, a read with the
// consistency token, a validation error.
func TestDevExternalClients(t *testing.T) {
	if testing.Short() {
		t.Skip("runs heed dev and external clients")
	}
	grpcurl := testenv.LookPath(t, "grpcurl")
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	runDev(t, devArgs(addrs, t.TempDir(), dbURL)...)
	const svc = "heed.ledger.v1.LedgerService"
	a := addrs.listen

	t.Run("grpcurl list", func(t *testing.T) {
		out := runTool(t, time.Minute, false, grpcurl, "-plaintext", a, "list")
		if !containsLine(out, svc) {
			t.Errorf("grpcurl list = %q, want a line %s", out, svc)
		}
	})

	var token string
	t.Run("grpcurl commands", func(t *testing.T) {
		runTool(t, time.Minute, false, grpcurl, "-plaintext", "-d", `{"request_id":"open-alice","account_id":"alice"}`, a, svc+"/OpenAccount")
		out := runTool(t, time.Minute, false, grpcurl, "-plaintext", "-d", `{"request_id":"deposit-1","account_id":"alice","amount":500}`, a, svc+"/Deposit")
		var res struct{ EventID, ConsistencyToken string }
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("grpcurl Deposit output %q: %v", out, err)
		}
		if res.EventID == "" || res.ConsistencyToken == "" {
			t.Fatalf("grpcurl Deposit output %q: want eventId and consistencyToken", out)
		}
		token = res.ConsistencyToken
	})

	t.Run("grpcurl validation error", func(t *testing.T) {
		out := runTool(t, time.Minute, true, grpcurl, "-plaintext", "-d", `{"request_id":"deposit-x","account_id":"alice","amount":-5}`, a, svc+"/Deposit")
		if !strings.Contains(out, "InvalidArgument") || !strings.Contains(out, "amount") {
			t.Errorf("grpcurl Deposit with amount -5 = %q, want InvalidArgument naming amount", out)
		}
	})

	t.Run("buf curl via reflection", func(t *testing.T) {
		if token == "" {
			t.Skip("no consistency token from the grpcurl commands")
		}
		testenv.LookPath(t, "go")
		script, err := filepath.Abs("../scripts/buf.sh")
		if err != nil {
			t.Fatal(err)
		}
		// The first run builds buf (minutes on a cold cache); .ci/run builds it
		// earlier with `scripts/buf.sh check`.
		out := runTool(t, 8*time.Minute, false, "bash", script, "buf", "curl", "--http2-prior-knowledge", "--protocol", "grpc",
			"http://"+a+"/"+svc+"/GetAccount", "-d", `{"account_id":"alice","consistency_token":"`+token+`"}`)
		var res struct {
			Account struct {
				AccountID string
				Balance   string // int64 is a JSON string
			}
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("buf curl GetAccount output %q: %v", out, err)
		}
		if res.Account.AccountID != "alice" || res.Account.Balance != "500" {
			t.Errorf("buf curl GetAccount = %q, want alice with balance 500", out)
		}
	})
}

func containsLine(s, want string) bool {
	for _, l := range lines(s) {
		if l == want {
			return true
		}
	}
	return false
}
