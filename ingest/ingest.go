// Package ingest is the command side of heed: it turns a validated command into
// an event envelope, writes it to Kafka (idempotent producer, acks=all, keyed by
// the aggregate) and answers only after the broker acknowledged it. It never
// touches the state tables.
//
// It is domain-agnostic: a domain's Connect handlers call Publisher.Publish with
// their event, and mount themselves on a Server, which adds validation,
// reflection and health on one port speaking Connect, gRPC and gRPC-Web.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kslog"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/failpoint"
)

// Record headers set on every event, for tools that do not decode protobuf.
const (
	HeaderEventType = "heed-event-type"
	HeaderEventID   = "heed-event-id"
)

// Config configures a Publisher. Brokers and Topic are required.
type Config struct {
	Brokers []string
	Topic   string
	// Linger is how long the producer waits for more commands to share a
	// batch before it sends one (default DefaultLinger; negative: send at once).
	// Commands that arrive while a produce request is in flight share the next
	// batch either way.
	Linger time.Duration
	// Compression is one of none, gzip, snappy, lz4, zstd (default none).
	Compression string
	// ProduceTimeout bounds how long a command waits for the broker's ack when
	// its caller set no shorter deadline (default 10s). A command already sent
	// to the broker waits for its answer even past it, so that a retry cannot
	// write the event twice.
	ProduceTimeout time.Duration
	// Logger receives the producer's logs (default: discard).
	Logger *slog.Logger
	// KafkaOpts are added to the Kafka client's options (TLS, SASL, hooks).
	KafkaOpts []kgo.Opt
	// Gate, if set, is asked before every command is written (see Gate).
	Gate Gate
	// OnProduce, if set, is told how long each produce took until the
	// broker answered, and its error (nil: acknowledged). Called
	// concurrently; it must be quick.
	OnProduce func(took time.Duration, err error)
	// IDs derives event IDs from request IDs (default: envelope.LegacySpace,
	// the ledger's).
	IDs envelope.IDSpace
}

// Gate decides whether commands may be written now, and over how many
// partitions their keys hash. topic.Guard is one: it refuses commands while
// the broker's topic is not the incarnation the projection is built from, and
// keeps keys hashing over the partition count the projection was built with,
// so that a partition added to the topic moves no key until an operator
// confirms it. Its methods are called for every command: they must be cheap
// and safe for concurrent use.
type Gate interface {
	// Admit returns nil when commands may be written, or why not; the
	// command then fails with unavailable and that reason.
	Admit() error
	// Partitions is how many partitions keys hash over (0: all the topic has).
	Partitions() int32
}

// DefaultLinger is the producer's default Linger. Under load it lets a produce
// request carry more commands (11–16 instead of about 6 with 64 callers in
// heed bench), so the producer and the broker spend less per command; it adds
// at most this much to a command's latency when the server is idle.
const DefaultLinger = 500 * time.Microsecond

// Validate reports what to change in an incomplete Config.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no Kafka brokers: set --brokers or HEED_BROKERS"))
	}
	if c.Topic == "" {
		errs = append(errs, errors.New("no topic: set --topic or HEED_TOPIC"))
	}
	if _, err := codec(c.Compression); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func codec(name string) (kgo.CompressionCodec, error) {
	switch name {
	case "", "none":
		return kgo.NoCompression(), nil
	case "gzip":
		return kgo.GzipCompression(), nil
	case "snappy":
		return kgo.SnappyCompression(), nil
	case "lz4":
		return kgo.Lz4Compression(), nil
	case "zstd":
		return kgo.ZstdCompression(), nil
	}
	return kgo.NoCompression(), fmt.Errorf("compression %q: use one of none, gzip, snappy, lz4, zstd", name)
}

// Publisher writes events to the topic. It is safe for concurrent use; all
// callers share one Kafka client and its batches.
type Publisher struct {
	cfg Config
	cl  *kgo.Client
}

// NewPublisher creates a Publisher with an idempotent, acks=all producer.
func NewPublisher(cfg Config) (*Publisher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ProduceTimeout <= 0 {
		cfg.ProduceTimeout = 10 * time.Second
	}
	switch {
	case cfg.Linger == 0:
		cfg.Linger = DefaultLinger
	case cfg.Linger < 0:
		cfg.Linger = 0
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c, _ := codec(cfg.Compression)
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(cfg.Linger),
		kgo.RecordDeliveryTimeout(cfg.ProduceTimeout),
		kgo.ProducerBatchCompression(c),
		kgo.RecordPartitioner(keyPartitioner(cfg.Gate)),
		kgo.WithLogger(kslog.New(cfg.Logger.With("component", "kafka"))),
	}
	cl, err := kgo.NewClient(append(opts, cfg.KafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("create Kafka producer: %w", err)
	}
	return &Publisher{cfg: cfg, cl: cl}, nil
}

// keyPartitioner hashes a record's key with murmur2, like Kafka's Java client,
// over the partition count gate gives when it is set and the topic has at
// least that many, otherwise over all the topic's partitions.
func keyPartitioner(gate Gate) kgo.Partitioner {
	if gate == nil {
		return kgo.StickyKeyPartitioner(nil)
	}
	return kgo.BasicConsistentPartitioner(func(topic string) func(*kgo.Record, int) int {
		byKey := kgo.StickyKeyPartitioner(nil).ForTopic(topic)
		return func(r *kgo.Record, n int) int {
			if p := int(gate.Partitions()); p > 0 && p < n {
				n = p
			}
			return byKey.Partition(r, n)
		}
	})
}

// Client returns the underlying Kafka client (for admin calls and hooks).
func (p *Publisher) Client() *kgo.Client { return p.cl }

// Close flushes nothing (every Publish waits for its ack) and closes the client.
func (p *Publisher) Close() { p.cl.Close() }

// NewEnvelope wraps event in the envelope heed writes for it: the event ID
// derived from requestID, the event's type, aggregateID and the time now. The
// payload is marshaled deterministically, so that a retried command has the
// same fingerprint. It fails only for an event that cannot be marshaled.
func NewEnvelope(aggregateID, requestID string, event proto.Message) (*envelopev1.Envelope, error) {
	return NewEnvelopeIn(envelope.LegacySpace(), aggregateID, requestID, event)
}

// NewEnvelopeIn is NewEnvelope with the event ID derived in ids.
func NewEnvelopeIn(ids envelope.IDSpace, aggregateID, requestID string, event proto.Message) (*envelopev1.Envelope, error) {
	payload := new(anypb.Any)
	if err := anypb.MarshalFrom(payload, event, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("marshal event: %w", err)
	}
	return &envelopev1.Envelope{
		EventId:     ids.EventID(requestID).String(),
		Type:        string(event.ProtoReflect().Descriptor().FullName()),
		RequestId:   requestID,
		OccurredAt:  timestamppb.Now(),
		AggregateId: aggregateID,
		Payload:     payload,
	}, nil
}

// NewRecord is the Kafka record Publish writes for env: keyed by its aggregate,
// with the event type and ID as headers for tools that do not decode protobuf.
func NewRecord(env *envelopev1.Envelope) (*kgo.Record, error) {
	value, err := proto.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("marshal envelope: %w", err)
	}
	return &kgo.Record{
		Key:   []byte(env.GetAggregateId()),
		Value: value,
		Headers: []kgo.RecordHeader{
			{Key: HeaderEventType, Value: []byte(env.GetType())},
			{Key: HeaderEventID, Value: []byte(env.GetEventId())},
		},
	}, nil
}

// Publish wraps event in an envelope whose event ID is derived from requestID
// (NewEnvelope), writes it keyed by aggregateID (NewRecord) and waits for the
// broker's ack. It returns the event ID and a consistency token for
// read-your-writes.
//
// Errors are *connect.Error: unavailable when the broker did not acknowledge
// (the caller should retry with the same request ID, which yields the same event
// ID) or the Gate refuses commands, canceled when the caller went away, internal for a payload that cannot
// be marshaled.
func (p *Publisher) Publish(ctx context.Context, aggregateID, requestID string, event proto.Message) (eventID, token string, err error) {
	if p.cfg.Gate != nil {
		if err := p.cfg.Gate.Admit(); err != nil {
			return "", "", connect.NewError(connect.CodeUnavailable, fmt.Errorf("commands are refused, nothing was written: %w", err))
		}
	}
	env, err := NewEnvelopeIn(p.cfg.IDs, aggregateID, requestID, event)
	if err != nil {
		return "", "", connect.NewError(connect.CodeInternal, err)
	}
	rec, err := NewRecord(env)
	if err != nil {
		return "", "", connect.NewError(connect.CodeInternal, err)
	}
	// Produce, not ProduceSync: ProduceSync sends at once, without lingering,
	// and concurrent commands would then travel a few to a request.
	// RecordDeliveryTimeout (ProduceTimeout) bounds the wait.
	done := make(chan error, 1)
	began := time.Now()
	p.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) { done <- err })
	err = <-done
	if p.cfg.OnProduce != nil {
		p.cfg.OnProduce(time.Since(began), err)
	}
	if err != nil {
		return "", "", produceError(ctx, err)
	}
	failpoint.Hit("ingest/after-produce")
	return env.GetEventId(), consistency.Token{Partition: rec.Partition, Offset: rec.Offset}.String(), nil
}

// ProduceRecords writes recs, prebuilt (an outbox's follow-ups), through the
// publisher's producer (idempotent, acks=all, keys hashed over the Gate's
// partition count), and waits for every ack. It returns one error per record,
// nil for the acknowledged ones; all of them are the Gate's refusal when it
// refuses writes. Records of one key keep their order: the producer writes
// them to one partition in order, and fails the ones after a failed one.
func (p *Publisher) ProduceRecords(ctx context.Context, recs []*kgo.Record) []error {
	errs := make([]error, len(recs))
	if p.cfg.Gate != nil {
		if err := p.cfg.Gate.Admit(); err != nil {
			for i := range errs {
				errs[i] = fmt.Errorf("writes are refused: %w", err)
			}
			return errs
		}
	}
	var wg sync.WaitGroup
	wg.Add(len(recs))
	for i, rec := range recs {
		p.cl.Produce(ctx, rec, func(_ *kgo.Record, err error) {
			errs[i] = err
			wg.Done()
		})
	}
	wg.Wait()
	return errs
}

// produceError maps a failed produce to the code a caller can act on.
func produceError(ctx context.Context, err error) error {
	if errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled {
		return connect.NewError(connect.CodeCanceled, err)
	}
	return connect.NewError(connect.CodeUnavailable,
		fmt.Errorf("the event was not acknowledged by Kafka (%w); nothing was applied yet: retry with the same request_id", err))
}
