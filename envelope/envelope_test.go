package envelope_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

func TestEventIDUUIDRequestIDUsedAsIs(t *testing.T) {
	for _, id := range []uuid.UUID{uuid.New(), uuid.Must(uuid.NewV7()), uuid.Nil} {
		if got := envelope.EventID(id.String()); got != id {
			t.Errorf("EventID(%s) = %s, want it as is", id, got)
		}
		// Hex digits are case-insensitive: the same UUID, the same event.
		if got := envelope.EventID(strings.ToUpper(id.String())); got != id {
			t.Errorf("EventID(%s) = %s, want %s", strings.ToUpper(id.String()), got, id)
		}
	}
}

func TestEventIDOtherStringsDeterministic(t *testing.T) {
	id := uuid.New()
	for _, req := range []string{
		"order-42",
		"",
		"{" + id.String() + "}",   // parses as a UUID but is not the canonical form
		"urn:uuid:" + id.String(), // likewise
		id.String()[:35],          // one character short
	} {
		a, b := envelope.EventID(req), envelope.EventID(req)
		if a != b {
			t.Errorf("EventID(%q) not deterministic: %s then %s", req, a, b)
		}
		if a.Version() != 5 {
			t.Errorf("EventID(%q) = %s, version %d; want a name-based UUIDv5", req, a, a.Version())
		}
	}
	if envelope.EventID("order-42") == envelope.EventID("order-43") {
		t.Error("different request IDs map to the same event ID")
	}
}

func TestFingerprint(t *testing.T) {
	base := func() *envelopev1.Envelope {
		return &envelopev1.Envelope{
			EventId: "e", Type: "t", RequestId: "r", AggregateId: "a",
			OccurredAt: timestamppb.Now(),
			Payload:    &anypb.Any{TypeUrl: "type.googleapis.com/t", Value: []byte{1, 2, 3}},
		}
	}
	fp := envelope.Fingerprint(base())
	retry := base()
	retry.OccurredAt = timestamppb.New(retry.OccurredAt.AsTime().Add(1e9))
	if envelope.Fingerprint(retry) != fp {
		t.Error("a retry with another occurred_at has another fingerprint")
	}
	for name, change := range map[string]func(*envelopev1.Envelope){
		"type":      func(e *envelopev1.Envelope) { e.Type = "u" },
		"aggregate": func(e *envelopev1.Envelope) { e.AggregateId = "b" },
		"payload":   func(e *envelopev1.Envelope) { e.Payload.Value = []byte{1, 2, 4} },
		"boundary":  func(e *envelopev1.Envelope) { e.Type, e.AggregateId = "ta", "" },
	} {
		e := base()
		change(e)
		if envelope.Fingerprint(e) == fp {
			t.Errorf("changing the %s keeps the fingerprint", name)
		}
	}
}

// TestFingerprintStable pins Fingerprint's output: fingerprints are stored in
// processed_events, and a redelivered event is compared with the stored one, so
// a change to the function would turn every retry of an event applied before an
// upgrade into a conflict.
func TestFingerprintStable(t *testing.T) {
	for _, c := range []struct {
		env  *envelopev1.Envelope
		want int64
	}{
		{&envelopev1.Envelope{Type: "heed.ledger.v1.FundsDeposited", AggregateId: "acct-1",
			Payload: &anypb.Any{Value: []byte{0x0a, 0x06, 'a', 'c', 'c', 't', '-', '1', 0x10, 0x05}}}, -6676507905517944901},
		{&envelopev1.Envelope{Type: "t"}, -1338719140252207549},
	} {
		if got := envelope.Fingerprint(c.env); got != c.want {
			t.Errorf("Fingerprint(type %q, aggregate %q, payload %x) = %d, want %d as every earlier heed stored it",
				c.env.GetType(), c.env.GetAggregateId(), c.env.GetPayload().GetValue(), got, c.want)
		}
	}
}
