package applier_test

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// envelopeValue marshals an envelope of key and requestID carrying payload,
// with its type taken from payload's type URL unless typ is given.
func envelopeValue(tb testing.TB, key, requestID, typ string, payload *anypb.Any) []byte {
	tb.Helper()
	if typ == "" {
		typ = strings.TrimPrefix(payload.GetTypeUrl(), "type.googleapis.com/")
	}
	b, err := proto.Marshal(&envelopev1.Envelope{
		EventId: envelope.EventID(requestID).String(), Type: typ,
		RequestId: requestID, AggregateId: key, Payload: payload,
	})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// failingHandler refuses every envelope with err.
type failingHandler struct {
	applier.Handler
	err error
}

func (f failingHandler) Decode(*envelopev1.Envelope) (any, error) { return nil, f.err }

// TestDecodeText checks that a record reaches a Handler only when the text the
// applier hands on (key, request_id, event type) is text Postgres can store,
// and that the poison reason itself always is.
func TestDecodeText(t *testing.T) {
	inc := func(n int64) *anypb.Any {
		a, err := anypb.New(wrapperspb.Int64(n))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	odd := &anypb.Any{TypeUrl: "type.googleapis.com/odd\x00type", Value: nil}
	// A request_id that is not UTF-8 cannot be marshaled; patch the bytes.
	notUTF8 := bytes.Replace(envelopeValue(t, "k", "@@@@", "", inc(1)), []byte("@@@@"), []byte("\xff\xfe@@"), 1)
	long := strings.Repeat("k", applier.MaxTextBytes+1)
	cases := []struct {
		name    string
		handler applier.Handler
		key     string
		value   []byte
		poison  string // "" for an event
	}{
		{"valid", new(counter), "k", envelopeValue(t, "k", "r-1", "", inc(1)), ""},
		{"longest text", new(counter), strings.Repeat("k", applier.MaxTextBytes), envelopeValue(t, strings.Repeat("k", applier.MaxTextBytes), strings.Repeat("r", applier.MaxTextBytes), "", inc(1)), ""},
		{"NUL in request_id", new(counter), "k", envelopeValue(t, "k", "r\x00", "", inc(1)), `request_id "r\x00" contains a NUL character`},
		{"request_id not UTF-8", new(counter), "k", notUTF8, "undecodable envelope"},
		{"request_id too long", new(counter), "k", envelopeValue(t, "k", strings.Repeat("r", applier.MaxTextBytes+1), "", inc(1)), "request_id is 1025 bytes long"},
		{"NUL in key and aggregate_id", new(counter), "k\x00", envelopeValue(t, "k\x00", "r-1", "", inc(1)), `record key (the envelope's aggregate_id) "k\x00" contains a NUL`},
		{"key too long", new(counter), long, envelopeValue(t, long, "r-1", "", inc(1)), "record key (the envelope's aggregate_id) is 1025 bytes long"},
		{"key not UTF-8", new(counter), "k\xff", envelopeValue(t, "k", "r-1", "", inc(1)), `record key "k\xff" does not match`},
		{"NUL in event type", new(counter), "k", envelopeValue(t, "k", "r-1", "", odd), `envelope type "odd\x00type" contains a NUL`},
		{"handler's reason with NUL and bad UTF-8", failingHandler{err: errors.New("bad \x00 and \xff")}, "k", envelopeValue(t, "k", "r-1", "", inc(1)), `bad \x00 and ` + "\uFFFD"},
		// Reasons that quote a record's bytes, or a handler's words about
		// them, are cut: a key may be a MiB long.
		{"handler's reason of a MiB", failingHandler{err: errors.New(strings.Repeat("é", 1<<19))}, "k", envelopeValue(t, "k", "r-1", "", inc(1)), "... (cut, 1048576 bytes in all)"},
		{"key of a MiB not its aggregate_id", new(counter), strings.Repeat("\xff", 1<<20), envelopeValue(t, "k", "r-1", "", inc(1)), `... (1048576 bytes) does not match envelope aggregate_id "k"`},
		{"event_id of a MiB", new(counter), "k", bigEventID(t), "invalid event_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, poison := applier.DecodeRecord(c.handler, &kgo.Record{Key: []byte(c.key), Value: c.value, Partition: 3, Offset: 9})
			if c.poison == "" {
				if poison != "" {
					t.Fatalf("poison %q, want an event", poison)
				}
				if ev.AggregateID != c.key || ev.Partition != 3 || ev.Offset != 9 || ev.Payload == nil {
					t.Errorf("event %+v", ev)
				}
				return
			}
			if !strings.Contains(poison, c.poison) {
				t.Errorf("poison %q, want it to contain %q", poison, c.poison)
			}
			if !storable(poison) {
				t.Errorf("poison reason %q is not text Postgres can store", poison)
			}
			if len(poison) > applier.MaxReasonBytes+64 {
				t.Errorf("poison reason of %d bytes, want at most about %d", len(poison), applier.MaxReasonBytes)
			}
		})
	}
}

// bigEventID is an envelope whose event_id is a MiB of text.
func bigEventID(tb testing.TB) []byte {
	tb.Helper()
	b, err := proto.Marshal(&envelopev1.Envelope{EventId: strings.Repeat("e", 1<<20), Type: "t", RequestId: "r", AggregateId: "k"})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// storable reports whether s is text Postgres can store: UTF-8 without NUL.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// FuzzDecode feeds records through the applier's decode path with the ledger
// as the Handler: built from fuzzed envelope fields, or raw bytes as the
// value when raw is not empty. Decoding never panics, and yields either an
// event whose text is storable and that agrees with the record, or a
// storable reason.
func FuzzDecode(f *testing.F) {
	payload := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	id := envelope.EventID("r-1").String()
	dep := payload(&ledgerv1.FundsDeposited{AccountId: "alice", Amount: 5})
	f.Add("alice", id, "heed.ledger.v1.FundsDeposited", "r-1", "alice", "type.googleapis.com/heed.ledger.v1.FundsDeposited", dep, []byte(nil))
	f.Add("alice", id, "heed.ledger.v1.AccountOpened", "r-1", "alice", "type.googleapis.com/heed.ledger.v1.AccountOpened", payload(&ledgerv1.AccountOpened{AccountId: "alice"}), []byte(nil))
	f.Add("alice", id, "heed.ledger.v1.FundsWithdrawn", "r-1", "alice", "type.googleapis.com/heed.ledger.v1.FundsWithdrawn", payload(&ledgerv1.FundsWithdrawn{AccountId: "alice", Amount: -1}), []byte(nil))
	f.Add("alice", id, "heed.ledger.v1.FundsDeposited", "d\x00x", "alice", "type.googleapis.com/heed.ledger.v1.FundsDeposited", dep, []byte(nil))
	f.Add("al\x00ice", id, "heed.ledger.v1.FundsDeposited", "r-1", "al\x00ice", "type.googleapis.com/heed.ledger.v1.FundsDeposited", dep, []byte(nil))
	f.Add("alice", "not-a-uuid", "heed.ledger.v1.Bogus", "r-1", "bob", "heed.ledger.v1.Bogus", []byte("\xff"), []byte(nil))
	f.Add("alice", "", "", "", "", "", []byte(nil), []byte("\xff\xfe not a protobuf"))
	f.Add("alice", "", "", "", "", "", []byte(nil), envelopeValue(f, "alice", "r-2", "", &anypb.Any{TypeUrl: "type.googleapis.com/heed.ledger.v1.FundsDeposited", Value: dep}))
	f.Fuzz(func(t *testing.T, key, eventID, typ, requestID, aggregateID, typeURL string, value, raw []byte) {
		rec := &kgo.Record{Key: []byte(key), Value: raw}
		if len(raw) == 0 {
			b, err := proto.Marshal(&envelopev1.Envelope{
				EventId: eventID, Type: typ, RequestId: requestID, AggregateId: aggregateID,
				Payload: &anypb.Any{TypeUrl: typeURL, Value: value},
			})
			if err != nil {
				return // not UTF-8: no protobuf library writes it, and raw covers such bytes
			}
			rec.Value = b
		}
		ev, poison := applier.DecodeRecord(ledger.Applier{}, rec)
		if poison != "" {
			if !storable(poison) {
				t.Fatalf("poison reason %q is not text Postgres can store", poison)
			}
			return
		}
		for name, s := range map[string]string{"request_id": ev.RequestID, "aggregate_id": ev.AggregateID, "type": ev.Type} {
			if !storable(s) || len(s) > applier.MaxTextBytes {
				t.Errorf("event %s %q is not text Postgres can store (%d bytes)", name, s, len(s))
			}
		}
		if ev.AggregateID != key || ev.Payload == nil || len(raw) == 0 && (ev.Type != typ || ev.RequestID != requestID) {
			t.Errorf("event %+v from key %q", ev, key)
		}
	})
}

// TestDecodeRules checks each rule the applier applies to an envelope before a
// Handler sees it, one record breaking one rule each: every such record is
// poison, with a reason that names the rule, and a record breaking none is an
// event. Dropping any one rule fails its case.
func TestDecodeRules(t *testing.T) {
	payload, err := anypb.New(wrapperspb.Int64(1))
	if err != nil {
		t.Fatal(err)
	}
	env := func(edit func(*envelopev1.Envelope)) []byte {
		e := &envelopev1.Envelope{
			EventId: envelope.EventID("r-1").String(), Type: "google.protobuf.Int64Value",
			RequestId: "r-1", AggregateId: "k", Payload: payload,
		}
		if edit != nil {
			edit(e)
		}
		b, err := proto.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	cases := []struct {
		name   string
		key    string
		value  []byte
		poison string // "" for an event
	}{
		{"valid", "k", env(nil), ""},
		{"not an envelope", "k", []byte("not an event"), "undecodable envelope"},
		{"event_id not a UUID", "k", env(func(e *envelopev1.Envelope) { e.EventId = "42" }), `invalid event_id "42"`},
		{"event_id missing", "k", env(func(e *envelopev1.Envelope) { e.EventId = "" }), `invalid event_id ""`},
		{"no payload", "k", env(func(e *envelopev1.Envelope) { e.Payload = nil }), "envelope has no payload"},
		{"type is not the payload's", "k", env(func(e *envelopev1.Envelope) { e.Type = "google.protobuf.StringValue" }),
			`envelope type "google.protobuf.StringValue" does not match payload type "google.protobuf.Int64Value"`},
		{"key is not the aggregate_id", "other", env(nil), `record key "other" does not match envelope aggregate_id "k"`},
		{"no key", "", env(nil), `record key "" does not match envelope aggregate_id "k"`},
		{"rejected by the handler", "k", env(func(e *envelopev1.Envelope) {
			p, _ := anypb.New(wrapperspb.Int64(0))
			e.Payload = p
		}), "increment 0 is below 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ev, poison := applier.DecodeRecord(new(counter), &kgo.Record{Key: []byte(c.key), Value: c.value})
			if c.poison == "" {
				if poison != "" || ev.AggregateID != "k" || ev.ID != envelope.EventID("r-1") || ev.RequestID != "r-1" || ev.Payload == nil {
					t.Errorf("event %+v, poison %q; want the envelope's event", ev, poison)
				}
				return
			}
			if !strings.Contains(poison, c.poison) {
				t.Errorf("poison %q, want it to contain %q", poison, c.poison)
			}
		})
	}
}
