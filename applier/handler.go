package applier

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// Event is one decoded record handed to a Handler.
type Event struct {
	// ID is the envelope's event ID.
	ID uuid.UUID
	// RequestID is the client's idempotency key for the command.
	RequestID string
	// AggregateID is the record key.
	AggregateID string
	// Type is the payload's fully qualified protobuf name.
	Type string
	// Partition and Offset locate the record in the topic.
	Partition int32
	Offset    int64
	// Time is the record's time: the latest record timestamp of its
	// partition up to it, so it never goes backwards within a partition and
	// is the same live and in a replay. It is the only clock applying an
	// event may read (never the wall clock, which a replay does not share).
	Time time.Time
	// Payload is what Handler.Decode returned for the envelope.
	Payload any
}

// Result is what applying one event did. The applier records it with the
// event's ID in the processed-event table, in the transaction that applied
// it: any domain gets "what happened to my command" (dedup.Results reads it)
// without a table of its own.
type Result struct {
	// Rejected is set when the domain refused the command by a business rule
	// (an overdraft, an unknown account): a decided outcome, not an error.
	Rejected bool
	// Reason says why it was rejected; empty otherwise.
	Reason string
	// Data is the domain's own result, e.g. a marshaled protobuf message; nil
	// for none.
	Data []byte
	// Emits are the follow-up events the event asks heed to publish (a
	// transfer's credit to its destination, say): written to the outbox in
	// the transaction that applied the event, published by the relay after
	// it commits. An applied or a rejected event may emit.
	Emits []Emit
}

// Emit is one follow-up event. Its request ID is derived from the emitting
// event's ID and key and Name (FollowUpRequestID), so a replay, a rebuild and a
// retried batch emit byte-identical follow-ups, and adding an emit to a
// handler later changes no existing ID.
type Emit struct {
	// Name tells the event's emits apart: unique among them, stable across
	// versions of the handler ("credit", "refund"), never a position.
	Name string
	// Key is the follow-up's aggregate: its record key.
	Key string
	// Event is the follow-up event, of a type the domain registered.
	Event proto.Message
}

// IsFollowUpRequestID reports whether requestID has the shape
// FollowUpRequestID gives: an event ID, a key hash and a name.
func IsFollowUpRequestID(requestID string) bool {
	id, rest, ok := strings.Cut(requestID, "/")
	if !ok || len(id) != 36 {
		return false
	}
	if _, err := uuid.Parse(id); err != nil {
		return false
	}
	tag, name, ok := strings.Cut(rest, "/")
	return ok && len(tag) == 16 && name != ""
}

// FollowUpRequestID is the request ID of the follow-up named name of the
// event originID keyed by originKey: the follow-up's event ID is this request
// ID's, in the domain's ID space. The origin's key is part of it because a
// request ID names one command per key (two accounts' commands may share one,
// and so their event ID): without it, two such commands' follow-ups to one
// key would share an ID, and the second would be taken for a reuse.
func FollowUpRequestID(originID uuid.UUID, originKey, name string) string {
	h := sha256.Sum256([]byte(originKey))
	return originID.String() + "/" + base64.RawURLEncoding.EncodeToString(h[:12]) + "/" + name
}

// Handler is the domain side of the applier.
//
// The applier calls Decode and Apply from one goroutine per partition, so
// implementations must be safe for concurrent use across partitions; calls for
// one partition never overlap.
type Handler interface {
	// Decode validates an envelope and returns its payload in the form Apply
	// expects. An error means the record can never be applied: it is quarantined
	// with the error's text as the reason, and the partition moves on.
	Decode(env *envelopev1.Envelope) (any, error)

	// Apply applies events, all new (never seen before), all of one partition, in
	// log order, inside tx. It must be deterministic: the result may depend only on
	// the events and on state written by earlier events of the same partition.
	// It returns one Result per event, in order, or nil when every event was
	// applied with no result data. Business rejections are results, not
	// errors. Any error rolls back the whole batch; what happens next is Classify's decision: an EventError
	// (see Quarantine) quarantines that event and applies the batch again
	// without it, a failure in Postgres that an event may cause splits the
	// batch until the event is found, anything else is retried with backoff
	// until it succeeds. Apply must neither commit nor roll back tx: the
	// applier does.
	Apply(ctx context.Context, tx pgx.Tx, events []Event) ([]Result, error)
}

// BatchHandler is a Handler that does not talk to the database while it
// applies: it queues its reads and its writes onto pipelined batches, so that a
// batch of events costs the applier two round trips to Postgres whatever its
// size, instead of the two plus Apply's own. When the Handler given to New
// implements BatchHandler, the applier never calls its Apply.
//
// Its methods are called from one goroutine per partition, like Decode and
// Apply: implementations must be safe for concurrent use across partitions.
type BatchHandler interface {
	Handler

	// Load queues onto b the reads that deciding events needs and returns what
	// they read, filled in by the queued queries' callbacks when b is sent in the
	// batch's transaction. events are all the decodable events of the batch (at
	// least one), of one partition, in log order; some may turn out to be
	// duplicates, which Loaded.Queue then does not see. Load must not block or
	// touch the database itself. A queued query failing, or its callback
	// returning an error, rolls back the whole batch, which is then retried.
	Load(b *pgx.Batch, events []Event) Loaded
}

// Loaded is what a BatchHandler's Load read, once the batch holding its
// queries has been sent. It belongs to one batch transaction and is used by one
// goroutine: it need not be safe for concurrent use.
type Loaded interface {
	// Queue decides the effects of events from what Load read, in log order,
	// deterministically (see Handler.Apply), and queues the writes onto b, which
	// the applier sends with the commit. events are the new ones among those
	// given to Load (at least one), in log order. It returns one Result per
	// event, in order, or nil when every event was applied with no result
	// data; the applier records them. Business rejections are results, not
	// errors. An error, or a queued write failing in
	// Postgres, rolls back the whole batch, which is then handled as for
	// Handler.Apply's errors; Load and Queue then run again on a fresh batch.
	Queue(events []Event, b *pgx.Batch) ([]Result, error)
}
