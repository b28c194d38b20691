package applier

import (
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// decoded is a record after decoding: either an event or the reason it is poison.
type decoded struct {
	rec         *kgo.Record
	event       Event
	fingerprint int64
	poison      string
	// hasID is set once the envelope's event ID parsed, even for poison: it
	// is stored with a quarantined record, for GetCommandResult.
	hasID bool
}

// decode turns a record into an Event through h, or says why it can never apply.
func decode(h Handler, rec *kgo.Record) decoded {
	d := decoded{rec: rec}
	var env envelopev1.Envelope
	if err := proto.Unmarshal(rec.Value, &env); err != nil {
		d.poison = fmt.Sprintf("undecodable envelope: %v", err)
		return d
	}
	id, err := uuid.Parse(env.GetEventId())
	if err != nil {
		d.poison = fmt.Sprintf("invalid event_id %q: %v", env.GetEventId(), err)
		return d
	}
	d.event.ID, d.hasID = id, true
	if env.GetPayload() == nil {
		d.poison = "envelope has no payload"
		return d
	}
	if name := strings.TrimPrefix(env.GetPayload().GetTypeUrl(), "type.googleapis.com/"); name != env.GetType() {
		d.poison = fmt.Sprintf("envelope type %q does not match payload type %q", env.GetType(), name)
		return d
	}
	if string(rec.Key) != env.GetAggregateId() {
		d.poison = fmt.Sprintf("record key %q does not match envelope aggregate_id %q", rec.Key, env.GetAggregateId())
		return d
	}
	payload, err := h.Decode(&env)
	if err != nil {
		d.poison = err.Error()
		return d
	}
	d.event = Event{
		ID:          id,
		RequestID:   env.GetRequestId(),
		AggregateID: env.GetAggregateId(),
		Type:        env.GetType(),
		Partition:   rec.Partition,
		Offset:      rec.Offset,
		Payload:     payload,
	}
	d.fingerprint = envelope.Fingerprint(&env)
	return d
}
