package applier

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// MaxTextBytes is the most bytes a record's key, request_id or event type may
// hold. Handlers store them as Postgres text, often in an index (whose entries
// Postgres caps at about 2.7 kB), so a record carrying more is poison.
const MaxTextBytes = 1024

// decoded is a record after decoding: either an event or the reason it is poison.
type decoded struct {
	rec         *kgo.Record
	event       Event
	fingerprint int64
	poison      string
	// hasID is set once the envelope's event ID parsed, even for poison, and
	// fingerprint with it: the ID is stored with a quarantined record, for
	// GetCommandResult, and a dropped one is recorded as processed.
	hasID bool
	// at is the record's effective time (see recordTimes).
	at time.Time
}

// decode turns a record into an Event through h, or says why it can never apply.
// Whatever a producer wrote (kcat, a bug), an Event's text fields are text
// Postgres can store (see checkText), and so is the poison reason.
func decode(h Handler, rec *kgo.Record) decoded {
	d := decoded{rec: rec}
	if reason := check(h, rec, &d); reason != "" {
		d.poison = storable(reason)
	}
	return d
}

// check fills in d's event and fingerprint from rec, or returns why rec can
// never apply.
func check(h Handler, rec *kgo.Record, d *decoded) string {
	var env envelopev1.Envelope
	if err := proto.Unmarshal(rec.Value, &env); err != nil {
		return "undecodable envelope: " + ProtoError(err)
	}
	id, err := uuid.Parse(env.GetEventId())
	if err != nil {
		return fmt.Sprintf("invalid event_id %s: %v", clip(env.GetEventId()), err)
	}
	if err := checkText(env.GetRequestId()); err != "" {
		return "envelope request_id " + err
	}
	if err := checkText(env.GetType()); err != "" {
		return "envelope type " + err
	}
	d.event.ID, d.hasID = id, true
	d.fingerprint = envelope.Fingerprint(&env)
	if env.GetPayload() == nil {
		return "envelope has no payload"
	}
	if name := strings.TrimPrefix(env.GetPayload().GetTypeUrl(), "type.googleapis.com/"); name != env.GetType() {
		return fmt.Sprintf("envelope type %q does not match payload type %s", env.GetType(), clip(name))
	}
	if string(rec.Key) != env.GetAggregateId() {
		return fmt.Sprintf("record key %s does not match envelope aggregate_id %s", clip(rec.Key), clip(env.GetAggregateId()))
	}
	if err := checkText(env.GetAggregateId()); err != "" {
		return "record key (the envelope's aggregate_id) " + err
	}
	payload, err := h.Decode(&env)
	if err != nil {
		return err.Error()
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
	return ""
}

// checkText says what keeps s from being stored as Postgres text by a handler
// (not UTF-8, a NUL, longer than MaxTextBytes), or returns "".
func checkText(s string) string {
	switch {
	case len(s) > MaxTextBytes:
		return fmt.Sprintf("is %d bytes long, more than the %d a record may carry (it starts %q)", len(s), MaxTextBytes, s[:32])
	case !utf8.ValidString(s):
		return fmt.Sprintf("%q is not valid UTF-8, which Postgres text requires", s)
	case strings.IndexByte(s, 0) >= 0:
		return fmt.Sprintf("%q contains a NUL character (U+0000), which Postgres text cannot store", s)
	}
	return ""
}

// MaxReasonBytes bounds a stored reason: it may quote a Handler's words or a
// record's bytes, and is stored, logged and shown with the record.
const MaxReasonBytes = 4096

// storable makes a poison reason (partly the Handler's words) text that
// Postgres can store: valid UTF-8 without NUL, at most about MaxReasonBytes
// long (a longer one is cut at a character and says how long it was).
func storable(reason string) string {
	if !utf8.ValidString(reason) || strings.IndexByte(reason, 0) >= 0 {
		reason = strings.ReplaceAll(strings.ToValidUTF8(reason, "\uFFFD"), "\x00", `\x00`)
	}
	if len(reason) <= MaxReasonBytes {
		return reason
	}
	cut := MaxReasonBytes
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return fmt.Sprintf("%s... (cut, %d bytes in all)", reason[:cut], len(reason))
}

// ProtoError is err's text with the no-break spaces protobuf-go puts at random
// into its error messages (so that nobody depends on their text) made plain
// spaces: the text is stored as a quarantine reason, and the same record must
// get the same reason whichever binary reads it.
func ProtoError(err error) string {
	return strings.ReplaceAll(err.Error(), "\u00a0", " ")
}
