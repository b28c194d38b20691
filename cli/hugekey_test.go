package cli

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestHugeKeyJunkDoesNotStopPartition is hole 3 of issue 26 as it was
// found: a record with a 20 kB random key and a garbage value, written
// around ingest to the partition of an account, is quarantined (storing it
// failed on an index of the raw key, and the partition stopped in a hot
// loop); the account's deposits before and after it apply and read back
// with their consistency tokens (they answered "unavailable: not applied
// yet"); heed quarantine lists it with its key cut short, shows it whole
// with its header, and drops it.
func TestHugeKeyJunkDoesNotStopPartition(t *testing.T) {
	dbURL := testenv.PostgresURL(t)
	addrs := freeDevAddrs(t)
	runDev(t, devArgs(addrs, t.TempDir(), dbURL)...)
	ctx := t.Context()
	c := ledgerClient(addrs.listen)
	open, err := c.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "h-open", AccountId: "hana"}))
	if err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	tok, err := consistency.Parse(open.Msg.GetConsistencyToken())
	if err != nil {
		t.Fatal(err)
	}
	balance(t, c, "hana", open.Msg.GetConsistencyToken())

	key := make([]byte, 20_000)
	value := make([]byte, 200)
	for _, b := range [][]byte{key, value} {
		if _, err := rand.Read(b); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(addrs.broker), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	junk := &kgo.Record{Key: key, Value: value, Partition: tok.Partition, Headers: []kgo.RecordHeader{{Key: "trace", Value: []byte{0xca, 0xfe}}}}
	if err := cl.ProduceSync(ctx, junk).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	dep, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "h-dep", AccountId: "hana", Amount: 30}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	if got := balance(t, c, "hana", dep.Msg.GetConsistencyToken()); got != 30 {
		t.Errorf("balance after the deposit that follows the junk = %d, want 30", got)
	}

	db := []string{"--database-url", dbURL}
	code, out, errOut := runOnce(t, append([]string{"quarantine", "list"}, db...)...)
	if code != 0 || !strings.Contains(out, "poison") || !strings.Contains(out, "... (20000 bytes)") || len(out) > 4000 {
		t.Errorf("quarantine list: code %d, %d bytes\n%.2000s%s\nwant the poison record, its key cut short", code, len(out), out, errOut)
	}
	pos := []string{"--partition", fmt.Sprint(junk.Partition), "--offset", fmt.Sprint(junk.Offset)}
	code, out, errOut = runOnce(t, append(append([]string{"quarantine", "show"}, db...), pos...)...)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%q", key)) || !strings.Contains(out, `header    "trace" = cafe (hex)`) {
		t.Errorf("quarantine show: code %d\n%.2000s%s\nwant the whole key and the header", code, out, errOut)
	}
	code, out, errOut = runOnce(t, append(append([]string{"quarantine", "drop", "--reason", "junk", "--brokers", addrs.broker}, db...), pos...)...)
	if code != 0 || !strings.Contains(out, "the key is released") {
		t.Errorf("quarantine drop: code %d\n%.2000s%s", code, out, errOut)
	}
}
