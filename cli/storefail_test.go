package cli

import (
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestFailingQuarantineStoreLogsFewLines is hole 3 of issue 26 as it was
// measured, against broker, serve and apply processes: a junk record with a
// 20 kB random key meets a quarantine whose every INSERT fails as the raw
// key's index did (SQLSTATE 54000). heed apply used to retry at once, 5,981
// log lines in 5 s; now it backs off (counted in heed_apply_retries_total)
// and writes a few lines over 5 s. Once
// the store works again the junk is quarantined and the deposit after it,
// of another account on the same partition, applies.
func TestFailingQuarantineStoreLogsFewLines(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t)
	ps := startParts(t, bin)
	conn, err := pgx.Connect(t.Context(), ps.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	for _, sql := range []string{
		`CREATE FUNCTION heed.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
RAISE EXCEPTION 'index row requires 20032 bytes, maximum size is 8191' USING ERRCODE = 'program_limit_exceeded'; END $$`,
		`CREATE TRIGGER refuse BEFORE INSERT ON heed.quarantine FOR EACH ROW EXECUTE FUNCTION heed.refuse()`,
	} {
		if _, err := conn.Exec(t.Context(), sql); err != nil {
			t.Fatal(err)
		}
	}
	startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen}, ps.common...)...)
	metrics := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	apply := startHeedLog(t, bin, "partitions assigned", append([]string{"apply", "--log-format", "text", "--metrics-listen", metrics}, ps.common...)...)
	retries := func(class string) float64 {
		labels := map[string]string{}
		if class != "" {
			labels["class"] = class
		}
		return sample(scrape(t, metrics), "heed_apply_retries_total", labels)
	}
	c := ledgerClient(ps.listen)
	open, err := c.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "o", AccountId: "olga"}))
	if err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	balance(t, c, "olga", open.Msg.GetConsistencyToken())

	key := make([]byte, 20_000)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	tok, err := consistency.Parse(open.Msg.GetConsistencyToken())
	if err != nil {
		t.Fatal(err)
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(ps.brokerAddr), kgo.DefaultProduceTopic(defaultTopic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// On olga's partition: her deposit after it waits for it.
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Key: key, Value: []byte("\xff garbage"), Partition: tok.Partition}).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	dep, err := c.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "d", AccountId: "olga", Amount: 7}))
	if err != nil {
		t.Fatalf("Deposit: %v", err)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		if !strings.Contains(apply.stderr.String(), "quarantine-store") {
			return "heed apply has not logged a failure to store the quarantine yet"
		}
		return ""
	})
	// heed's own lines: the Kafka client's (component=kafka) are its own
	// business.
	heedLines := func() int {
		n := 0
		for _, l := range strings.Split(apply.stderr.String(), "\n") {
			if l != "" && !strings.Contains(l, "component=kafka") {
				n++
			}
		}
		return n
	}
	before, tried := heedLines(), retries("")
	time.Sleep(5 * time.Second) // the store keeps failing meanwhile
	lines := heedLines() - before
	attempts := retries("") - tried
	t.Logf("in 5 s of failing: %v attempts retried, %d log lines", attempts, lines)
	if lines > 3 {
		t.Errorf("heed apply wrote %d log lines in 5 s while the quarantine's store failed, want at most 3:\n%s", lines, apply.stderr.String())
	}
	// Backing off from 100ms to 5s: some 10 attempts; spinning, thousands.
	if attempts > 40 {
		t.Errorf("heed apply retried %v attempts in 5 s while the quarantine's store failed: it spins instead of backing off", attempts)
	}
	if n := retries("quarantine-store"); n < 1 {
		t.Errorf("heed_apply_retries_total{class=\"quarantine-store\"} = %v, want the failures counted", n)
	}
	if _, err := conn.Exec(t.Context(), `DROP TRIGGER refuse ON heed.quarantine`); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, func() string {
		res, err := c.GetAccount(t.Context(), connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "olga", ConsistencyToken: dep.Msg.GetConsistencyToken()}))
		if err != nil {
			return fmt.Sprintf("the deposit after the junk is not applied once the store works again: %v", err)
		}
		if got := res.Msg.GetAccount().GetBalance(); got != 7 {
			return fmt.Sprintf("balance %d, want 7", got)
		}
		return ""
	})
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM heed.quarantine WHERE key = $1`, key).Scan(&n); err != nil || n != 1 {
		var all string
		_ = conn.QueryRow(t.Context(), `SELECT string_agg(kind || ' ' || length(key) || ' ' || reason, '; ') FROM heed.quarantine`).Scan(&all)
		t.Errorf("%d junk records quarantined (%v), want 1; the quarantine holds: %s\napply:\n%s", n, err, all, apply.stderr.String())
	}
}
