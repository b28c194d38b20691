package command_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/command"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	"github.com/heed-dev/heed/gen/heed/command/v1/commandv1connect"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/schema"
	"github.com/heed-dev/heed/topic"
)

// tally is a domain that shares nothing with the ledger: each event, a
// google.protobuf.Int64Value, adds its value to the tally its key names. A
// tally never goes below zero: an event that would take it there is rejected.
// An event of value 0 can never apply (Decode refuses it: quarantined). Its
// result is the tally after the event (as it stayed, when rejected), an
// Int64Value.
type tally struct{}

var _ applier.Handler = tally{}

func (tally) Decode(env *envelopev1.Envelope) (any, error) {
	var v wrapperspb.Int64Value
	if err := env.GetPayload().UnmarshalTo(&v); err != nil {
		return nil, fmt.Errorf("not an Int64Value: %w", err)
	}
	if v.GetValue() == 0 {
		return nil, errors.New("a tally event adds nothing")
	}
	return v.GetValue(), nil
}

func (tally) Apply(ctx context.Context, tx pgx.Tx, events []applier.Event) ([]applier.Result, error) {
	out := make([]applier.Result, len(events))
	for i, e := range events {
		add := e.Payload.(int64)
		var n int64
		err := tx.QueryRow(ctx, `SELECT n FROM tallies WHERE key = $1`, e.AggregateID).Scan(&n)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return nil, err
		}
		if n+add < 0 {
			out[i] = applier.Result{Rejected: true, Reason: fmt.Sprintf("tally %d cannot take %d", n, add)}
		} else {
			n += add
			if _, err := tx.Exec(ctx, `INSERT INTO tallies (key, n) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET n = excluded.n`, e.AggregateID, n); err != nil {
				return nil, err
			}
		}
		data, err := proto.Marshal(wrapperspb.Int64(n))
		if err != nil {
			return nil, err
		}
		out[i].Data = data
	}
	return out, nil
}

// domain is the tally domain wired in-process: a fresh database, an embedded
// broker over TCP, a publisher, and CommandService served on a real listener.
type domain struct {
	broker []string
	topic  string
	pool   *pgxpool.Pool
	pub    *ingest.Publisher
	client commandv1connect.CommandServiceClient
}

func newDomain(t *testing.T) *domain {
	t.Helper()
	ctx := t.Context()
	logger := testenv.Logger(t)
	d := &domain{broker: testenv.Broker(t, 1).Addrs(), topic: "heed.tally"}
	pool, err := schema.Connect(ctx, testenv.PostgresURL(t), schema.Default, 8)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	sets := []schema.Migrations{{Name: "dedup", FS: dedup.Migrations}, {Name: "applier", FS: applier.Migrations}, {Name: "topic", FS: topic.Migrations}}
	if err := schema.Migrate(ctx, pool, schema.Default, sets, logger); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE tallies (key text PRIMARY KEY, n bigint NOT NULL)`); err != nil {
		t.Fatalf("create tallies: %v", err)
	}
	d.pool = pool
	pub, err := ingest.NewPublisher(ingest.Config{Brokers: d.broker, Topic: d.topic, Logger: logger})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	t.Cleanup(pub.Close)
	d.pub = pub
	if _, err := ingest.EnsureTopic(ctx, pub.Client(), d.topic, 1, -1); err != nil {
		t.Fatalf("ensure topic: %v", err)
	}

	results := d.results(10*time.Second, command.WithResultType(&wrapperspb.Int64Value{}))
	srv := ingest.NewServer(logger)
	path, h := commandv1connect.NewCommandServiceHandler(command.NewService(results), ingest.HandlerOptions()...)
	srv.Mount(commandv1connect.CommandServiceName, path, h)
	ln, err := ingest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	t.Cleanup(func() {
		stopServe()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	d.client = commandv1connect.NewCommandServiceClient(http.DefaultClient, "http://"+ln.Addr().String())
	return d
}

// results are Results over the domain's projection, checking tokens against
// the topic.
func (d *domain) results(maxWait time.Duration, opts ...command.Option) *command.Results {
	return command.NewResults(d.pool, d.topic, maxWait, append([]command.Option{command.WithTopicEnds(consistency.NewEnds(d.pub, time.Second))}, opts...)...)
}

// startApplier runs an applier of the domain until the test ends.
func (d *domain) startApplier(t *testing.T) {
	t.Helper()
	a, err := applier.New(applier.Config{Brokers: d.broker, Topic: d.topic, Group: "heed-tally", Logger: testenv.Logger(t)}, d.pool, tally{})
	if err != nil {
		t.Fatalf("applier: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("applier: %v", err)
		}
	})
}

// add publishes an event adding n to key's tally and returns its consistency
// token.
func (d *domain) add(t *testing.T, key, requestID string, n int64) string {
	t.Helper()
	_, token, err := d.pub.Publish(t.Context(), key, requestID, wrapperspb.Int64(n))
	if err != nil {
		t.Fatalf("publish %s %s %d: %v", key, requestID, n, err)
	}
	return token
}

// get asks CommandService over HTTP.
func (d *domain) get(t *testing.T, req *commandv1.GetCommandResultRequest) (*commandv1.GetCommandResultResponse, error) {
	t.Helper()
	resp, err := d.client.GetCommandResult(t.Context(), connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return resp.Msg, nil
}

// want is what a GetCommandResult response must say; result -1: none.
type want struct {
	status commandv1.CommandStatus
	key    string
	reason string // a part of the reason; "" for an empty one
	result int64
}

func (d *domain) check(t *testing.T, req *commandv1.GetCommandResultRequest, w want) {
	t.Helper()
	got, err := d.get(t, req)
	if err != nil {
		t.Fatalf("GetCommandResult(%v): %v", req, err)
	}
	if got.GetStatus() != w.status || got.GetKey() != w.key {
		t.Errorf("GetCommandResult(%v) = %v for key %q (%s), want %v for key %q", req, got.GetStatus(), got.GetKey(), got.GetReason(), w.status, w.key)
	}
	if w.reason == "" && got.GetReason() != "" || !strings.Contains(got.GetReason(), w.reason) {
		t.Errorf("GetCommandResult(%v) reason = %q, want one with %q", req, got.GetReason(), w.reason)
	}
	if wantID := envelope.EventID(req.GetRequestId()).String(); req.GetRequestId() != "" && got.GetEventId() != wantID {
		t.Errorf("GetCommandResult(%v) event_id = %s, want %s", req, got.GetEventId(), wantID)
	}
	switch {
	case w.result < 0 && got.GetResult() != nil:
		t.Errorf("GetCommandResult(%v) result = %v, want none", req, got.GetResult())
	case w.result >= 0:
		var v wrapperspb.Int64Value
		if err := got.GetResult().UnmarshalTo(&v); err != nil {
			t.Errorf("GetCommandResult(%v) result = %v, want an Int64Value: %v", req, got.GetResult(), err)
		} else if v.GetValue() != w.result {
			t.Errorf("GetCommandResult(%v) result = %d, want %d", req, v.GetValue(), w.result)
		}
	}
}

func byRequest(id, key, token string) *commandv1.GetCommandResultRequest {
	return &commandv1.GetCommandResultRequest{Ref: &commandv1.GetCommandResultRequest_RequestId{RequestId: id}, Key: key, ConsistencyToken: token}
}

func wantCode(t *testing.T, what string, err error, code connect.Code, part string) {
	t.Helper()
	if connect.CodeOf(err) != code || !strings.Contains(err.Error(), part) {
		t.Errorf("%s: error %v, want %v with %q", what, err, code, part)
	}
}

// TestService drives CommandService over HTTP against a real Postgres,
// broker and applier, for a domain that is not the ledger.
func TestService(t *testing.T) {
	d := newDomain(t)

	// Before any applier runs: in flight.
	early := d.add(t, "a", "early", 3)
	d.check(t, byRequest("early", "", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_PENDING, key: "", result: -1})
	d.check(t, byRequest("early", "a", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_PENDING, key: "a", result: -1})
	_, err := d.results(100*time.Millisecond).Get(t.Context(), command.Ref{RequestID: "early", Token: early})
	wantCode(t, "Get with a token not applied yet", err, connect.CodeUnavailable, "retry the read")

	d.startApplier(t)
	d.check(t, byRequest("early", "", early), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "a", result: 3})

	t.Run("applied", func(t *testing.T) {
		tok := d.add(t, "a", "add-2", 2)
		d.check(t, byRequest("add-2", "", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "a", result: 5})
		d.check(t, byRequest("add-2", "a", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "a", result: 5})
		byEvent := &commandv1.GetCommandResultRequest{Ref: &commandv1.GetCommandResultRequest_EventId{EventId: envelope.EventID("add-2").String()}}
		d.check(t, byEvent, want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "a", result: 5})
	})
	t.Run("rejected", func(t *testing.T) {
		tok := d.add(t, "a", "take-9", -9)
		d.check(t, byRequest("take-9", "", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_REJECTED, key: "a", reason: "tally 5 cannot take -9", result: 5})
	})
	t.Run("unknown with a token", func(t *testing.T) {
		tok := d.add(t, "a", "add-1", 1)
		d.check(t, byRequest("never-sent", "", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_UNKNOWN, reason: "never written", result: -1})
		d.check(t, byRequest("never-sent", "", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_PENDING, result: -1})
	})
	t.Run("several commands without key", func(t *testing.T) {
		tok := d.add(t, "b", "add-2", 40) // add-2 again, for another key: another command
		_, err := d.get(t, byRequest("add-2", "", tok))
		wantCode(t, "add-2 without key", err, connect.CodeInvalidArgument, "this request_id names 2 commands, one for each of the keys a, b: give key to say which")
		d.check(t, byRequest("add-2", "b", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "b", result: 40})
		d.check(t, byRequest("add-2", "a", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "a", result: 5})
		_, err = d.results(time.Second, command.WithKeyField("tally_id")).Get(t.Context(), command.Ref{EventID: envelope.EventID("add-2").String()})
		wantCode(t, "Get by event ID without key", err, connect.CodeInvalidArgument, "this event_id names 2 commands, one for each of the keys a, b: give tally_id to say which")
	})
	t.Run("conflict", func(t *testing.T) {
		tok := d.add(t, "b", "add-2", 41) // add-2 of b again, with other content
		d.check(t, byRequest("add-2", "b", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_CONFLICT, key: "b", reason: "never applies", result: -1})
		d.check(t, byRequest("add-2", "", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_CONFLICT, key: "b", reason: "never applies", result: -1})
		d.check(t, byRequest("add-2", "b", ""), want{status: commandv1.CommandStatus_COMMAND_STATUS_APPLIED, key: "b", result: 40})
	})
	t.Run("quarantined and parked", func(t *testing.T) {
		d.add(t, "c", "zero", 0)
		tok := d.add(t, "c", "behind", 1)
		d.check(t, byRequest("zero", "", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_QUARANTINED, key: "", reason: "adds nothing", result: -1})
		d.check(t, byRequest("behind", "c", tok), want{status: commandv1.CommandStatus_COMMAND_STATUS_PARKED, key: "c", reason: "parked", result: -1})
	})
	t.Run("invalid requests", func(t *testing.T) {
		_, err := d.get(t, &commandv1.GetCommandResultRequest{})
		wantCode(t, "no ref", err, connect.CodeInvalidArgument, "ref")
		_, err = d.get(t, byRequest("add-2", "a\x00b", ""))
		wantCode(t, "a key with NUL", err, connect.CodeInvalidArgument, "key")
		_, err = d.get(t, &commandv1.GetCommandResultRequest{Ref: &commandv1.GetCommandResultRequest_EventId{EventId: "not-a-uuid"}})
		wantCode(t, "a bad event_id", err, connect.CodeInvalidArgument, "event_id")
		_, err = d.get(t, byRequest("add-2", "", "not-a-token"))
		wantCode(t, "a bad token", err, connect.CodeInvalidArgument, "malformed consistency token")
		_, err = d.get(t, byRequest("add-2", "", consistency.Token{Partition: 0, Offset: 1 << 40}.String()))
		wantCode(t, "a token past the topic's end", err, connect.CodeInvalidArgument, "past the topic's end")
	})
	t.Run("no result type", func(t *testing.T) {
		r := d.results(time.Second)
		o, err := r.Get(t.Context(), command.Ref{RequestID: "take-9", Key: "a"})
		if err != nil {
			t.Fatalf("Get: %v", err)
		}
		var v wrapperspb.Int64Value
		if o.Status != commandv1.CommandStatus_COMMAND_STATUS_REJECTED || o.Message != nil || proto.Unmarshal(o.Result, &v) != nil || v.GetValue() != 5 {
			t.Errorf("Get = %v, %q, message %v, result %x, want REJECTED with the result 5 as bytes only", o.Status, o.Reason, o.Message, o.Result)
		}
		resp, err := command.NewService(r).GetCommandResult(t.Context(), connect.NewRequest(byRequest("take-9", "a", "")))
		if err != nil || resp.Msg.GetStatus() != commandv1.CommandStatus_COMMAND_STATUS_REJECTED || resp.Msg.GetResult() != nil {
			t.Errorf("GetCommandResult = %v, %v, want REJECTED without a result", resp, err)
		}
	})
	t.Run("not the result type", func(t *testing.T) {
		// A recorded result that is not of the declared type is an internal
		// error: 0xff is no protobuf message (a truncated tag).
		tok := d.add(t, "a", "garbled", 1)
		if _, err := d.results(10*time.Second).Await(t.Context(), tok); err != nil {
			t.Fatalf("Await: %v", err)
		}
		garbled := dedup.Row{Item: dedup.Item{ID: envelope.EventID("garbled"), Key: "a"}, Outcome: dedup.Applied, Result: []byte{0xff}}
		if err := dedup.SetOutcome(t.Context(), d.pool, garbled); err != nil {
			t.Fatalf("SetOutcome: %v", err)
		}
		_, err := d.get(t, byRequest("garbled", "", ""))
		wantCode(t, "GetCommandResult of a garbled result", err, connect.CodeInternal, "the recorded result of event "+envelope.EventID("garbled").String()+" is not a google.protobuf.Int64Value")
	})
	t.Run("event ID derivation", func(t *testing.T) {
		r := d.results(time.Second, command.WithEventID(func(requestID string) uuid.UUID { return envelope.EventID("add-" + requestID) }))
		o, err := r.Get(t.Context(), command.Ref{RequestID: "2", Key: "a"})
		if err != nil || o.Status != commandv1.CommandStatus_COMMAND_STATUS_APPLIED || o.EventID != envelope.EventID("add-2") {
			t.Errorf("Get(2) with add-<id> event IDs = %+v, %v, want add-2 APPLIED", o, err)
		}
	})
	t.Run("ref", func(t *testing.T) {
		r := d.results(time.Second)
		for _, ref := range []command.Ref{{}, {RequestID: "add-2", EventID: envelope.EventID("add-2").String()}, {EventID: "x"}} {
			_, err := r.Get(t.Context(), ref)
			wantCode(t, fmt.Sprintf("Get(%+v)", ref), err, connect.CodeInvalidArgument, "")
		}
	})
}
