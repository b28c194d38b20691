package applier

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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
	// Payload is what Handler.Decode returned for the envelope.
	Payload any
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
	// Business rejections are results to record, not errors. Any error rolls back
	// the whole batch, which is then retried with backoff until it succeeds.
	Apply(ctx context.Context, tx pgx.Tx, events []Event) error
}
