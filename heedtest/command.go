package heedtest

import (
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
)

// Command is one record of a stream CheckReplay writes to the topic: a
// command's event as heed's publisher writes it (an envelope keyed by Key,
// its event ID derived from RequestID in the domain's ID space), or, with
// Raw, bytes that are not an event at all.
//
// A generator returns a stream of them. Two commands with the same Key are
// applied in stream order. A command repeating an earlier one's Key,
// RequestID and Event is a duplicate (a client's retry), applied once; one
// repeating its Key and RequestID with another Event is a conflict,
// quarantined; unless they are further apart in record time than the dedup
// window (DedupWindow): then it is a new command.
type Command struct {
	// Key is the aggregate: the record key, which picks the partition.
	Key string
	// RequestID is the client's idempotency key.
	RequestID string
	// Event is the command's event, one of the domain's event types (a
	// type the domain does not know is quarantined, as heed does live).
	Event proto.Message
	// Raw, when not nil, is written as the record's value instead of an
	// envelope of Event: junk, which heed quarantines, parking its key.
	Raw []byte
	// At is the record's timestamp as an offset from the stream's start
	// (see StartTime): the time the domain's handlers read as Event.Time.
	// Record time is the latest timestamp of the partition up to the
	// record, so an At earlier than a previous command's on the same
	// partition reads as that command's time.
	At time.Duration
}

// String shows c compactly, as CheckReplay lists a failing stream:
//
//	key/request-id heed.ledger.v1.FundsDeposited{account_id:"a1" amount:5} @1m0s
func (c Command) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%s ", c.Key, c.RequestID)
	switch {
	case c.Raw != nil:
		fmt.Fprintf(&b, "raw%q", c.Raw)
	case c.Event == nil:
		b.WriteString("<no event>")
	default:
		text := prototext.MarshalOptions{}.Format(c.Event)
		fmt.Fprintf(&b, "%s{%s}", c.Event.ProtoReflect().Descriptor().FullName(), strings.Join(strings.Fields(text), " "))
	}
	fmt.Fprintf(&b, " @%v", c.At)
	return b.String()
}
