package cli

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
)

// TestRelayCrashAfterAck kills `heed relay` (SIGKILL, failpoints build)
// after the broker acknowledged a follow-up and before the relay recorded
// it: the restarted relay produces it again, and the applier applies it
// once, dropping the duplicate by its event ID.
//
// The test writes the outbox row an emit would (a deposit to the account) by
// hand, in the same form, so that exactly one follow-up is in flight.
func TestRelayCrashAfterAck(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the heed binary")
	}
	bin := testenv.BuildHeed(t, "failpoints")
	ps := startParts(t, bin)
	serve := startHeedLog(t, bin, "serving Connect", append([]string{"serve", "--listen", ps.listen}, ps.common...)...)
	defer serve.interrupt(t)
	applyArgs := append([]string{"apply", "--relay=false", "--metrics-listen", ""}, ps.common...)
	apply := startHeedLog(t, bin, "partitions assigned", applyArgs...)
	client := ledgerClient(ps.listen)
	res, err := client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "open-1", AccountId: "acct-1"}))
	if err != nil {
		t.Fatalf("OpenAccount: %v", err)
	}
	if b := balance(t, client, "acct-1", res.Msg.GetConsistencyToken()); b != 0 {
		t.Fatalf("balance %d, want 0", b)
	}
	apply.interrupt(t) // the follow-up must not be seen before the relay runs twice

	pool, err := pgxpool.New(t.Context(), ps.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	origin := applier.Event{ID: uuid.New(), Partition: 0, Offset: 1 << 40, Time: time.Now().UTC().Truncate(time.Microsecond)}
	env, err := applier.FollowUpEnvelope(ledger.Domain().IDs(), origin,
		applier.Emit{Name: "credit", Key: "acct-1", Event: &ledgerv1.FundsDeposited{AccountId: "acct-1", Amount: 7}})
	if err != nil {
		t.Fatal(err)
	}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	eventID := uuid.MustParse(env.GetEventId())
	if _, err := pool.Exec(t.Context(), `INSERT INTO heed.outbox (topic, origin_partition, origin_offset, name, event_id, key, key_hash, type, value, event_time)
VALUES ($1, 0, $2, 'credit', $3, 'acct-1', $4, $5, $6, $7)`, defaultTopic, origin.Offset, eventID, dedup.KeyHash("acct-1"), env.GetType(), value, origin.Time); err != nil {
		t.Fatal(err)
	}

	admin, err := kgo.NewClient(kgo.SeedBrokers(ps.brokerAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	records := func() int64 {
		ends, err := kadm.NewClient(admin).ListEndOffsets(t.Context(), defaultTopic)
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
		return n
	}
	before := records()

	relayArgs := append([]string{"relay", "--metrics-listen", "", "--relay-poll", "100ms"}, ps.common...)
	crashing := startHeedEnv(t, []string{"HEED_FAILPOINTS=relay/after-ack=crash"}, bin, "relay started", relayArgs...)
	select {
	case <-crashing.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("heed relay armed at relay/after-ack did not crash within 60s\nstderr:\n%s", crashing.stderr.String())
	}
	if !strings.Contains(crashing.stderr.String(), "failpoint relay/after-ack: crashing") {
		t.Fatalf("heed relay exited without crashing at relay/after-ack: %v\nstderr:\n%s", crashing.err, crashing.stderr.String())
	}
	if n := records() - before; n != 1 {
		t.Fatalf("the crashed relay produced %d records, want 1", n)
	}
	var marked int64
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM heed.heed_outbox_relay`).Scan(&marked); err != nil || marked != 0 {
		t.Fatalf("the relay recorded its progress (%d rows, %v) before it crashed", marked, err)
	}

	relay := startHeedLog(t, bin, "relay started", relayArgs...)
	testenv.Eventually(t, 60*time.Second, func() string {
		var next int64
		if err := pool.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM heed.heed_outbox_relay`).Scan(&next); err != nil {
			return err.Error()
		}
		if next != origin.Offset+1 {
			return fmt.Sprintf("relay position %d, want %d", next, origin.Offset+1)
		}
		return ""
	})
	if n := records() - before; n != 2 {
		t.Fatalf("the relays produced %d records in all, want 2 (the follow-up and its duplicate)", n)
	}

	apply = startHeedLog(t, bin, "partitions assigned", applyArgs...)
	defer apply.interrupt(t)
	defer relay.interrupt(t)
	testenv.Eventually(t, 60*time.Second, func() string {
		var processed, bal int64
		if err := pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM heed.processed_events WHERE event_id = $1), (SELECT balance FROM heed.accounts WHERE account_id = 'acct-1')`, eventID).Scan(&processed, &bal); err != nil {
			return err.Error()
		}
		if processed != 1 || bal != 7 {
			return fmt.Sprintf("follow-up processed %d times, balance %d: want once and 7", processed, bal)
		}
		return ""
	})
	// Both copies were consumed, the second as a duplicate: the balance
	// stays 7 once every partition is at the topic's end.
	ends, err := kadm.NewClient(admin).ListEndOffsets(t.Context(), defaultTopic)
	if err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 60*time.Second, func() string {
		var behind []string
		ends.Each(func(o kadm.ListedOffset) {
			var next int64
			if err := pool.QueryRow(t.Context(), `SELECT coalesce(max(next_offset), 0) FROM heed.applied_positions WHERE topic = $1 AND partition = $2`, defaultTopic, o.Partition).Scan(&next); err != nil {
				behind = append(behind, err.Error())
			} else if next != o.Offset {
				behind = append(behind, fmt.Sprintf("partition %d at %d of %d", o.Partition, next, o.Offset))
			}
		})
		return strings.Join(behind, "; ")
	})
	if b := balance(t, client, "acct-1", ""); b != 7 {
		t.Errorf("balance %d after both copies were consumed, want 7 (the duplicate dropped)", b)
	}
}
