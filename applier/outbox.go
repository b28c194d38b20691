package applier

import (
	"context"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// DefaultMaxEmitBytes is Config.MaxEmitBytes's default: Kafka's default
// largest record batch (message.max.bytes, 1 MiB) less room for the batch's
// own header.
const DefaultMaxEmitBytes = 1<<20 - 1024

// Record headers a follow-up carries, like every event heed writes (see
// ingest.HeaderEventType): the applier does not import ingest.
const (
	headerEventType = "heed-event-type"
	headerEventID   = "heed-event-id"
)

// OutboxRow is one follow-up event in the outbox: what the relay produces.
type OutboxRow struct {
	// OriginPartition, OriginOffset and Name identify the emit: the
	// emitting record and the handler's name for the follow-up.
	OriginPartition int32
	OriginOffset    int64
	Name            string
	// EventID is the follow-up's event ID, Key its record key, KeyHash
	// dedup.KeyHash(Key), Type its payload's full name.
	EventID uuid.UUID
	Key     string
	KeyHash int64
	Type    string
	// Value is the follow-up's record value: its envelope, marshaled
	// deterministically.
	Value []byte
	// Time is the emitting event's record time, the follow-up's occurred_at.
	Time time.Time
}

// Headers are the record headers the follow-up is produced with.
func (r OutboxRow) Headers() [][2]string {
	return [][2]string{{headerEventType, r.Type}, {headerEventID, r.EventID.String()}}
}

// FollowUpEnvelope is the envelope of the follow-up e of the event origin in
// the ID space ids: request ID FollowUpRequestID(origin.ID, origin.AggregateID, e.Name), its
// event ID in ids, occurred_at the origin's record time (never the wall
// clock: a replay builds the same bytes). It fails only for an event that
// cannot be marshaled.
func FollowUpEnvelope(ids envelope.IDSpace, origin Event, e Emit) (*envelopev1.Envelope, error) {
	payload := new(anypb.Any)
	if err := anypb.MarshalFrom(payload, e.Event, proto.MarshalOptions{Deterministic: true}); err != nil {
		return nil, fmt.Errorf("marshal follow-up %q: %w", e.Name, err)
	}
	rid := FollowUpRequestID(origin.ID, origin.AggregateID, e.Name)
	return &envelopev1.Envelope{
		EventId:     ids.EventID(rid).String(),
		Type:        string(e.Event.ProtoReflect().Descriptor().FullName()),
		RequestId:   rid,
		OccurredAt:  timestamppb.New(origin.Time),
		AggregateId: e.Key,
		Payload:     payload,
	}, nil
}

// outboxRows builds the outbox rows of the follow-ups results emit for
// events (paired by index; results may be nil). An emit that could never be
// produced (a name given twice, a key or name that is not storable text, a
// record larger than maxBytes, an event that does not marshal) makes its
// event poison: the error is an *EventError, which quarantines the event
// rather than block the relay later.
func outboxRows(ids envelope.IDSpace, maxBytes int, events []Event, results []Result) ([]OutboxRow, error) {
	var rows []OutboxRow
	for i, r := range results {
		if len(r.Emits) == 0 || i >= len(events) {
			continue
		}
		ev := events[i]
		names := make(map[string]bool, len(r.Emits))
		for _, e := range r.Emits {
			row, reason := outboxRow(ids, maxBytes, ev, e, names)
			if reason != "" {
				return nil, &EventError{Offset: ev.Offset, Reason: "follow-up " + clip(e.Name) + ": " + reason}
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// outboxRow builds the row of ev's follow-up e, or says why e can never be
// produced. names holds the names of ev's emits seen so far.
func outboxRow(ids envelope.IDSpace, maxBytes int, ev Event, e Emit, names map[string]bool) (OutboxRow, string) {
	switch {
	case e.Name == "":
		return OutboxRow{}, "has no name"
	case names[e.Name]:
		return OutboxRow{}, "the name is given to two follow-ups of one event"
	case e.Event == nil:
		return OutboxRow{}, "has no event"
	}
	names[e.Name] = true
	if err := checkText(e.Name); err != "" {
		return OutboxRow{}, "name " + err
	}
	if err := checkText(e.Key); err != "" {
		return OutboxRow{}, "key " + err
	}
	if e.Key == "" {
		return OutboxRow{}, "has an empty key"
	}
	env, err := FollowUpEnvelope(ids, ev, e)
	if err != nil {
		return OutboxRow{}, ProtoError(err)
	}
	if err := checkText(env.GetRequestId()); err != "" {
		return OutboxRow{}, "request_id " + err
	}
	value, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		return OutboxRow{}, "marshal envelope: " + ProtoError(err)
	}
	row := OutboxRow{
		OriginPartition: ev.Partition, OriginOffset: ev.Offset, Name: e.Name,
		EventID: uuid.MustParse(env.GetEventId()), Key: e.Key, KeyHash: dedup.KeyHash(e.Key),
		Type: env.GetType(), Value: value, Time: ev.Time,
	}
	size := len(row.Value) + len(row.Key)
	for _, h := range row.Headers() {
		size += len(h[0]) + len(h[1])
	}
	if size > maxBytes {
		return OutboxRow{}, fmt.Sprintf("its record is %d bytes, more than the %d a follow-up may take", size, maxBytes)
	}
	return row, ""
}

// insertOutboxSQL writes one outbox row. ON CONFLICT: a re-drive may apply
// an event whose earlier attempt's rows a crash left (never, as they commit
// together; but the rows are the same bytes either way).
const insertOutboxSQL = `INSERT INTO outbox (topic, origin_partition, origin_offset, name, event_id, key, key_hash, type, value, event_time)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING`

// queueOutbox queues the INSERT of rows onto b.
func queueOutbox(b *pgx.Batch, topic string, rows []OutboxRow) {
	for _, r := range rows {
		b.Queue(insertOutboxSQL, outboxArgs(topic, r)...)
	}
}

func outboxArgs(topic string, r OutboxRow) []any {
	var at *time.Time
	if !r.Time.IsZero() {
		t := r.Time
		at = &t
	}
	return []any{topic, r.OriginPartition, r.OriginOffset, r.Name, [16]byte(r.EventID), r.Key, r.KeyHash, r.Type, r.Value, at}
}

// emitConfig is what building follow-ups needs from a Config.
type emitConfig struct {
	ids      envelope.IDSpace
	maxBytes int
}

// insertOutbox writes to the outbox in tx the follow-ups results emit for
// ev (a re-drive's one event).
func insertOutbox(ctx context.Context, tx pgx.Tx, ec emitConfig, topic string, ev Event, results []Result) error {
	if ec.maxBytes <= 0 {
		ec.maxBytes = DefaultMaxEmitBytes
	}
	rows, err := outboxRows(ec.ids, ec.maxBytes, []Event{ev}, results)
	if err != nil {
		return err
	}
	for _, r := range rows {
		if _, err := tx.Exec(ctx, insertOutboxSQL, outboxArgs(topic, r)...); err != nil {
			return fmt.Errorf("write follow-up %q to the outbox: %w", r.Name, err)
		}
	}
	return nil
}
