package ledger_test

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// A request_id Postgres text cannot store (it holds a NUL) is refused by every
// RPC that takes one, with invalid_argument naming the field, over Connect
// (binary and JSON, where a client writes it as "\u0000") and gRPC; nothing is
// produced.
func TestRequestIDWithNULRefused(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	jsonClient := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, p.baseURL, connect.WithProtoJSON())
	const nul = "d\x00x"
	cases := []struct {
		name string
		call func() error
	}{
		{"OpenAccount", func() error {
			_, err := p.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: nul, AccountId: "a"}))
			return err
		}},
		{"Deposit as JSON", func() error {
			_, err := jsonClient.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: nul, AccountId: "a", Amount: 1}))
			return err
		}},
		{"Withdraw over gRPC", func() error {
			_, err := p.grpc.Withdraw(t.Context(), connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: nul, AccountId: "a", Amount: 1}))
			return err
		}},
		{"only a NUL", func() error {
			_, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "\x00", AccountId: "a", Amount: 1}))
			return err
		}},
		{"GetCommandResult", func() error {
			_, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
				Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: nul}}))
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("got %v (code %v), want invalid_argument", err, connect.CodeOf(err))
			}
			if !strings.Contains(err.Error(), "request_id") || !strings.Contains(err.Error(), "NUL") {
				t.Errorf("error %q does not name request_id and the NUL", err)
			}
		})
	}
	for part, end := range p.endOffsets(t) {
		if end != 0 {
			t.Errorf("partition %d end offset %d after refused commands, want 0", part, end)
		}
	}
}

// A record written straight to the topic (kcat, a bug) whose request_id
// Postgres text cannot store, or which is longer than a record may carry, is
// quarantined as poison with its bytes and a reason naming the field, instead
// of failing its batch in Postgres forever; the partition's later events are
// applied.
func TestRecordWithUnstorableTextQuarantined(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	app := p.startApplier(t)
	const key = "ivan"
	p.waitApplied(t, p.open(t, "open-ivan", key).GetConsistencyToken())

	deposit := func(requestID string) []byte {
		t.Helper()
		payload, err := anypb.New(&ledgerv1.FundsDeposited{AccountId: key, Amount: 5})
		if err != nil {
			t.Fatal(err)
		}
		b, err := proto.Marshal(&envelopev1.Envelope{
			EventId:     envelope.EventID(requestID).String(),
			Type:        "heed.ledger.v1.FundsDeposited",
			RequestId:   requestID,
			AggregateId: key,
			Payload:     payload,
		})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	poison := []struct {
		name, reason string
		value        []byte
	}{
		{"NUL in request_id", `request_id "d\x00x" contains a NUL character`, deposit("d\x00x")},
		{"request_id too long", "request_id is 2000 bytes long", deposit(strings.Repeat("r", 2000))},
	}
	recs := make([]*kgo.Record, len(poison))
	for i, pr := range poison {
		recs[i] = &kgo.Record{Key: []byte(key), Value: pr.value}
	}
	p.produceRaw(t, recs...)

	// Another account's events after them, in the same (only) partition.
	p.open(t, "open-judy", "judy")
	dep := p.deposit(t, "dep-judy", "judy", 7)
	if tok := token(t, dep.GetConsistencyToken()); tok.Partition != recs[0].Partition || tok.Offset <= recs[len(recs)-1].Offset {
		t.Fatalf("deposit at %d/%d is not after the poison records in partition %d", tok.Partition, tok.Offset, recs[0].Partition)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	res, err := p.client.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "judy", ConsistencyToken: dep.GetConsistencyToken()}))
	if err != nil {
		t.Fatalf("GetAccount(judy) after the poison records: %v (the partition is stuck behind them)", err)
	}
	if got := res.Msg.GetAccount().GetBalance(); got != 7 {
		t.Errorf("judy's balance = %d, want 7", got)
	}

	for i, pr := range poison {
		t.Run(pr.name, func(t *testing.T) {
			var (
				kind, reason string
				value        []byte
			)
			err := p.pool.QueryRow(t.Context(), `SELECT kind, reason, value FROM quarantine WHERE topic = $1 AND partition = $2 AND "offset" = $3`,
				p.topic, recs[i].Partition, recs[i].Offset).Scan(&kind, &reason, &value)
			if err != nil {
				t.Fatalf("quarantine row: %v", err)
			}
			if kind != "poison" || !strings.Contains(reason, pr.reason) || !bytes.Equal(value, pr.value) {
				t.Errorf("kind %s reason %q (value kept: %t), want poison with %q", kind, reason, bytes.Equal(value, pr.value), pr.reason)
			}
		})
	}
	if n := p.count(t, `SELECT count(*) FROM processed_events WHERE aggregate = $1`, key); n != 1 {
		t.Errorf("%d command results for %s, want 1 (the open; the poison deposits are not applied)", n, key)
	}
	if s := app.Stats(); s.Quarantined != 2 || s.Applied != 3 {
		t.Errorf("stats = %+v, want 2 quarantined, 3 applied", s)
	}
}
