package heed

import (
	"context"
	"fmt"
	"time"

	"buf.build/go/protovalidate"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/heed-dev/heed/applier"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// Event is one event of type T as heed hands it to a simple-form handler.
type Event[T proto.Message] struct {
	// ID is the event ID, derived from the request ID in the domain's space.
	ID uuid.UUID
	// RequestID is the client's idempotency key for the command.
	RequestID string
	// Key is the aggregate the event belongs to: the record key. Events of
	// one key apply in the order they were written.
	Key string
	// Partition and Offset locate the record in the topic.
	Partition int32
	Offset    int64
	// Time is the record's time: the latest record timestamp of its partition
	// up to it. It never goes backwards within a partition and is the same
	// live and in a replay: it is the only clock applying may read.
	Time time.Time
	// Msg is the event.
	Msg T
}

// Record is an event of any registered type as heed hands it to a
// BatchHandler: Payload holds the decoded message (a pointer to the
// registered type), Time the record's time (see Event.Time).
type Record = applier.Event

// Result is what applying one event decided. Rejected is a business
// refusal (not an error: the command's outcome is REJECTED with Reason);
// Data, if not nil, is the domain's result message, marshaled (see Applied):
// GetCommandResult returns it. heed records it with the event ID in the
// transaction that applied the event.
type Result = applier.Result

// Emit is a follow-up event a handler asks heed to publish (see Result's
// Emits): written to the outbox in the transaction that applied the event,
// published after it commits, so a command spanning two aggregates is never
// a dual write.
type Emit = applier.Emit

// FollowUp is the follow-up event named name (unique among the event's
// emits, stable across versions), keyed by key.
func FollowUp(name, key string, event proto.Message) Emit {
	return Emit{Name: name, Key: key, Event: event}
}

// FollowUpEventID is the event ID of the follow-up named name that the event
// originID keyed by originKey, of domain d, emits: what a domain's
// GetCommandResult follows through a command's steps.
func (d *Domain) FollowUpEventID(originID uuid.UUID, originKey, name string) uuid.UUID {
	return d.ids.EventID(applier.FollowUpRequestID(originID, originKey, name))
}

// Applied is the result of an applied event that returns msg (nil: none),
// marshaled deterministically.
func Applied(msg proto.Message) (Result, error) {
	if msg == nil {
		return Result{}, nil
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return Result{}, fmt.Errorf("marshal the result: %w", err)
	}
	return Result{Data: b}, nil
}

// Rejected is the result of an event refused by a business rule, with the
// reason the command's caller reads. It undoes nothing: what the handler
// wrote for the event commits with it (a refusal may record itself, as the
// booking example's rejected holds do), so decide before writing.
func Rejected(reason string) Result { return Result{Rejected: true, Reason: reason} }

// RejectedWith is Rejected carrying the domain's result message too (the
// state the refusal left, say), which GetCommandResult returns typed.
func RejectedWith(reason string, msg proto.Message) (Result, error) {
	r, err := Applied(msg)
	r.Rejected, r.Reason = true, reason
	return r, err
}

// Quarantine returns the error that quarantines the event at offset with
// reason: it can never apply (its content breaks a rule no later event can
// change). heed stores it whole, parks the later events of its key, and
// applies the rest of the batch without it. Return it from a handler.
func Quarantine(offset int64, reason string) error {
	return &applier.EventError{Offset: offset, Reason: reason}
}

// Tx is heed's transaction as a handler sees it: it reads and writes, and
// cannot begin, commit or roll back. heed commits the state change, the
// event's processed row and the partition's position together.
type Tx interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error)
}

// narrowTx hides a pgx.Tx's Begin, Commit and Rollback from handlers (a
// type assertion cannot find them).
type narrowTx struct{ tx pgx.Tx }

func (t narrowTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return t.tx.Exec(ctx, sql, args...)
}
func (t narrowTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	return t.tx.Query(ctx, sql, args...)
}
func (t narrowTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return t.tx.QueryRow(ctx, sql, args...)
}
func (t narrowTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	return t.tx.SendBatch(ctx, b)
}
func (t narrowTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rows pgx.CopyFromSource) (int64, error) {
	return t.tx.CopyFrom(ctx, table, columns, rows)
}

// ApplyFunc applies one event of type T inside heed's transaction and
// returns its result. It must be deterministic: what it writes and returns
// may depend only on the event (its time included) and on the state earlier
// events wrote, never on the wall clock, randomness or another system, so
// that a replay of the topic builds the same state. An error that is not
// Quarantine's rolls the batch back: heed retries it, or splits it to find
// the event whose write Postgres refuses and quarantines that one.
type ApplyFunc[T proto.Message] func(ctx context.Context, tx Tx, ev Event[T]) (Result, error)

// EventOption configures how events of type T are read from the topic.
type EventOption[T proto.Message] func(*eventType)

// Check adds a rule events of type T must meet to be applied at all; key is
// the record key. A record breaking it is quarantined with the error's text
// before any handler sees it. Rules that need state are the handler's.
func Check[T proto.Message](f func(key string, msg T) error) EventOption[T] {
	return func(e *eventType) {
		e.check = func(key string, m proto.Message) error { return f(key, m.(T)) }
	}
}

// eventType is a registered event type.
type eventType struct {
	name  protoreflect.FullName
	new   func() proto.Message
	check func(key string, m proto.Message) error
	// apply is the simple form's handler; nil for an accepted type.
	apply func(ctx context.Context, tx Tx, ev *applier.Event) (Result, error)
}

// On registers event type T and applies each of its events with apply, in
// the domain's simple form: the handler runs SQL inside heed's transaction,
// one event after another in log order.
func On[T proto.Message](d *Domain, apply ApplyFunc[T], opts ...EventOption[T]) {
	e := register[T](d, opts)
	if e == nil {
		return
	}
	if apply == nil {
		d.fail(fmt.Errorf("heed.On[%s]: apply is nil", e.name))
		return
	}
	e.apply = func(ctx context.Context, tx Tx, ev *applier.Event) (Result, error) {
		return apply(ctx, tx, Event[T]{
			ID: ev.ID, RequestID: ev.RequestID, Key: ev.AggregateID, Partition: ev.Partition,
			Offset: ev.Offset, Time: ev.Time, Msg: ev.Payload.(T),
		})
	}
}

// Accept registers event type T for the domain's BatchHandler (see Batch):
// its events reach the handler's Load and Queue as Records whose Payload is
// a T.
func Accept[T proto.Message](d *Domain, opts ...EventOption[T]) {
	register[T](d, opts)
}

func register[T proto.Message](d *Domain, opts []EventOption[T]) *eventType {
	var zero T
	m := zero.ProtoReflect().Type().New().Interface()
	name := m.ProtoReflect().Descriptor().FullName()
	if _, ok := d.events[string(name)]; ok {
		d.fail(fmt.Errorf("event type %s registered twice", name))
		return nil
	}
	mt := zero.ProtoReflect().Type()
	e := &eventType{name: name, new: func() proto.Message { return mt.New().Interface() }}
	for _, o := range opts {
		o(e)
	}
	d.events[string(name)] = e
	d.order = append(d.order, string(name))
	return e
}

// BatchHandler applies a batch of events in the domain's fast form: Load
// queues the reads deciding the batch needs, Queue decides every event in
// memory from what they read and queues the writes. heed sends the reads with
// its own dedup lookup and the writes with its commit, so a batch of any size
// costs two round trips to Postgres. Both are called from one goroutine per
// partition: an implementation must be safe for concurrent use across
// partitions.
type BatchHandler interface {
	// Load queues onto b the reads deciding events needs and returns what they
	// read, filled in by the queries' callbacks once b is sent. events are
	// the batch's decodable events (at least one), of one partition, in log
	// order; some may turn out to be duplicates, which Queue then does not
	// see. Load must not block or touch the database itself.
	Load(b *pgx.Batch, events []Record) Loaded
}

// Loaded is what a BatchHandler's Load read. Queue decides events (the new
// ones among Load's, in log order) deterministically (see ApplyFunc) and
// queues their writes onto b; it returns one Result per event, or nil when
// every event was applied with no result. An error rolls the batch back,
// as ApplyFunc's does.
type Loaded = applier.Loaded

// Batch sets the domain's BatchHandler, which applies every event type
// registered with Accept.
func Batch(d *Domain, h BatchHandler) {
	if d.batch != nil {
		d.fail(fmt.Errorf("heed.Batch called twice"))
	}
	d.batch = h
}

// Handler is the applier handler heed runs the domain with.
func (d *Domain) Handler() applier.Handler {
	h := &handler{d: d}
	if d.validate {
		v, err := protovalidate.New()
		if err != nil {
			d.fail(fmt.Errorf("protovalidate: %w", err))
		}
		h.validator = v
	}
	if d.batch != nil {
		return batchHandler{h}
	}
	return h
}

type handler struct {
	d         *Domain
	validator protovalidate.Validator
}

// Decode unmarshals a registered event type and checks its rules.
func (h *handler) Decode(env *envelopev1.Envelope) (any, error) {
	e, ok := h.d.events[env.GetType()]
	if !ok {
		return nil, fmt.Errorf("unknown event type %q (domain %s knows %v)", env.GetType(), h.d.name, h.d.EventTypes())
	}
	m := e.new()
	if err := proto.Unmarshal(env.GetPayload().GetValue(), m); err != nil {
		return nil, fmt.Errorf("invalid %s payload: %s", e.name, applier.ProtoError(err))
	}
	if h.validator != nil {
		if err := h.validator.Validate(m); err != nil {
			return nil, fmt.Errorf("invalid %s: %v", e.name, err)
		}
	}
	if e.check != nil {
		if err := e.check(env.GetAggregateId(), m); err != nil {
			return nil, fmt.Errorf("invalid %s: %v", e.name, err)
		}
	}
	return m, nil
}

// Apply applies events one by one with their handlers (the simple form).
func (h *handler) Apply(ctx context.Context, tx pgx.Tx, events []applier.Event) ([]applier.Result, error) {
	results := make([]applier.Result, len(events))
	t := narrowTx{tx}
	for i := range events {
		e := h.d.events[events[i].Type]
		if e == nil || e.apply == nil {
			return nil, fmt.Errorf("no handler for event type %s", events[i].Type)
		}
		r, err := e.apply(ctx, t, &events[i])
		if err != nil {
			return nil, err
		}
		results[i] = r
	}
	return results, nil
}

// batchHandler is the batched form: an applier.BatchHandler over the
// domain's BatchHandler.
type batchHandler struct{ *handler }

func (b batchHandler) Load(batch *pgx.Batch, events []applier.Event) applier.Loaded {
	return b.d.batch.Load(batch, events)
}

// Apply runs Load and Queue in two round trips of their own, for the
// applier's paths that apply one event inside a savepoint (a re-drive).
func (b batchHandler) Apply(ctx context.Context, tx pgx.Tx, events []applier.Event) ([]applier.Result, error) {
	if len(events) == 0 {
		return nil, nil
	}
	pb := &pgx.Batch{}
	l := b.d.batch.Load(pb, events)
	if err := tx.SendBatch(ctx, pb).Close(); err != nil {
		return nil, fmt.Errorf("load: %w", err)
	}
	pb = &pgx.Batch{}
	results, err := l.Queue(events, pb)
	if err != nil {
		return nil, err
	}
	if err := tx.SendBatch(ctx, pb).Close(); err != nil {
		return nil, fmt.Errorf("write: %w", err)
	}
	return results, nil
}
