package observe_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/observe"
	"github.com/heed-dev/heed/schema"
)

// TestTraceLinksRPCProduceApply: with tracing on, a Deposit's RPC span is the
// parent of the span that produced its record, whose context travels in the
// record's headers, and the apply span of the transaction that applied it
// links to that produce span: RPC → produce → apply, in one trace.
func TestTraceLinksRPCProduceApply(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr := &observe.Tracing{Provider: tp, Propagator: propagation.TraceContext{}}
	ctx := t.Context()
	const topic = "traced"
	b := testenv.Broker(t, 2)
	pool, err := schema.Connect(ctx, testenv.PostgresURL(t), schema.Default, 8)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := schema.Migrate(ctx, pool, schema.Default, ledger.Schema, nil); err != nil {
		t.Fatal(err)
	}
	pub, err := ingest.NewPublisher(ingest.Config{Brokers: b.Addrs(), Topic: topic, KafkaOpts: tr.KafkaOpts()})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if _, err := ingest.EnsureTopic(ctx, pub.Client(), topic, 2, -1); err != nil {
		t.Fatal(err)
	}
	srv := ingest.NewServer(testenv.Logger(t))
	path, h := ledgerv1connect.NewLedgerServiceHandler(ledger.NewService(pub, pool, topic, 5*time.Second), srv.HandlerOptions(tr.HandlerOptions()...)...)
	srv.Mount(ledgerv1connect.LedgerServiceName, path, h)
	ln, err := ingest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = srv.Serve(sctx, ln) }()
	a, err := applier.New(applier.Config{Brokers: b.Addrs(), Topic: topic, Group: "traced", KafkaOpts: tr.KafkaOpts(), Observer: tr, Logger: testenv.Logger(t)}, pool, ledger.Applier{})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = a.Run(sctx) }()

	client := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, "http://"+ln.Addr().String())
	if _, err := client.OpenAccount(ctx, connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: "o", AccountId: "alice"})); err != nil {
		t.Fatal(err)
	}
	res, err := client.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "d", AccountId: "alice", Amount: 5}))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := consistency.Parse(res.Msg.GetConsistencyToken())
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := consistency.Wait(wctx, pool, topic, tok); err != nil {
		t.Fatal(err)
	}

	var rpc, produce sdktrace.ReadOnlySpan
	testenv.Eventually(t, 10*time.Second, func() string {
		rpc, produce = nil, nil
		for _, s := range rec.Ended() {
			if s.SpanKind() == trace.SpanKindServer && strings.HasSuffix(s.Name(), "LedgerService/Deposit") {
				rpc = s
			}
		}
		if rpc == nil {
			return "no server span of Deposit"
		}
		for _, s := range rec.Ended() {
			if s.SpanKind() == trace.SpanKindProducer && s.Parent().SpanID() == rpc.SpanContext().SpanID() {
				produce = s
			}
		}
		if produce == nil {
			return "no producer span under Deposit's span"
		}
		for _, s := range rec.Ended() {
			if s.Name() != "apply" {
				continue
			}
			for _, l := range s.Links() {
				if l.SpanContext.SpanID() == produce.SpanContext().SpanID() && l.SpanContext.TraceID() == rpc.SpanContext().TraceID() {
					return ""
				}
			}
		}
		return "no apply span links to the produce span of Deposit"
	})
}
