package observe

import (
	"context"
	"fmt"
	"os"
	"time"

	"connectrpc.com/connect"
	"connectrpc.com/otelconnect"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kotel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/heed-dev/heed/applier"
)

// Tracing links an RPC, the record it produced and the apply transaction
// that applied it: otelconnect spans for RPCs, kotel spans for produce and
// fetch with the trace context carried in the record's headers, and an
// "apply" span per committed batch linked to every record's context. A nil
// *Tracing traces nothing.
type Tracing struct {
	Provider   trace.TracerProvider
	Propagator propagation.TextMapPropagator
}

// TracingFromEnv returns Tracing exporting over OTLP/HTTP when the standard
// variables ask for it (OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, and OTEL_TRACES_EXPORTER unset or
// "otlp"; OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES and the exporter's other
// OTEL_EXPORTER_OTLP_* variables apply), else nil: off by default. shutdown
// flushes what is buffered.
func TracingFromEnv(ctx context.Context, service string) (t *Tracing, shutdown func(context.Context) error, err error) {
	noop := func(context.Context) error { return nil }
	exp := os.Getenv("OTEL_TRACES_EXPORTER")
	endpoint := os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") + os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" || (exp != "" && exp != "otlp") {
		return nil, noop, nil
	}
	exporter, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, noop, fmt.Errorf("OTLP trace exporter (check the OTEL_EXPORTER_OTLP_* variables): %w", err)
	}
	if os.Getenv("OTEL_SERVICE_NAME") == "" {
		_ = os.Setenv("OTEL_SERVICE_NAME", service)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
	return &Tracing{Provider: tp, Propagator: propagation.TraceContext{}}, tp.Shutdown, nil
}

// HandlerOptions are the Connect handler options that trace RPCs.
func (t *Tracing) HandlerOptions() []connect.HandlerOption {
	if t == nil {
		return nil
	}
	ic, err := otelconnect.NewInterceptor(otelconnect.WithTracerProvider(t.Provider), otelconnect.WithPropagator(t.Propagator), otelconnect.WithoutMetrics())
	if err != nil {
		return nil
	}
	return []connect.HandlerOption{connect.WithInterceptors(ic)}
}

// KafkaOpts are the Kafka client options that trace produce and fetch and
// carry the trace context in record headers.
func (t *Tracing) KafkaOpts() []kgo.Opt {
	if t == nil {
		return nil
	}
	k := kotel.NewKotel(kotel.WithTracer(kotel.NewTracer(kotel.TracerProvider(t.Provider), kotel.TracerPropagator(t.Propagator))))
	return []kgo.Opt{kgo.WithHooks(k.Hooks()...)}
}

var _ applier.Observer = (*Tracing)(nil)

// maxLinks bounds the links of one apply span.
const maxLinks = 128

// BatchApplied records an "apply" span for the batch, back-dated to its
// start, linked to the trace context each record carries (the produce span
// of its RPC).
func (t *Tracing) BatchApplied(partition int32, records []*kgo.Record, took time.Duration, s applier.BatchStats) {
	if t == nil {
		return
	}
	var links []trace.Link
	for _, r := range records {
		if len(links) == maxLinks {
			break
		}
		sc := trace.SpanContextFromContext(t.Propagator.Extract(context.Background(), kotel.NewRecordCarrier(r)))
		if sc.IsValid() {
			links = append(links, trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{attribute.Int64("messaging.kafka.offset", r.Offset)}})
		}
	}
	start := time.Now().Add(-took)
	_, span := t.Provider.Tracer("github.com/heed-dev/heed/applier").Start(context.Background(), "apply",
		trace.WithTimestamp(start), trace.WithLinks(links...), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.Int("messaging.destination.partition.id", int(partition)),
			attribute.Int("heed.batch.records", len(records)), attribute.Int("heed.batch.applied", s.Applied),
			attribute.Int("heed.batch.duplicates", s.Duplicates)))
	span.End()
}

// BatchRetried implements applier.Observer (nothing to trace).
func (t *Tracing) BatchRetried(int32, string) {}

// Observers fans applier events out to each non-nil observer.
func Observers(os ...applier.Observer) applier.Observer {
	var out multi
	for _, o := range os {
		if o != nil {
			out = append(out, o)
		}
	}
	return out
}

type multi []applier.Observer

func (m multi) BatchApplied(p int32, r []*kgo.Record, took time.Duration, s applier.BatchStats) {
	for _, o := range m {
		o.BatchApplied(p, r, took, s)
	}
}

func (m multi) BatchRetried(p int32, class string) {
	for _, o := range m {
		o.BatchRetried(p, class)
	}
}
