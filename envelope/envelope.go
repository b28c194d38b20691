// Package envelope holds the rules every part of heed applies to the event
// envelope (gen/heed/envelope/v1): how an event ID is derived from a request ID,
// and how a record's content is fingerprinted.
package envelope

import (
	"crypto/sha256"
	"encoding/binary"

	"github.com/google/uuid"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// namespace scopes the name-based (UUIDv5) event IDs derived from request IDs
// that are not UUIDs themselves.
var namespace = uuid.MustParse("7d4b7c1e-3f0a-5b9e-8c2d-6a1f0e9b4c3d")

// EventID derives an event ID from a client's request ID, deterministically: a
// request ID that is a UUID (any version; a time-ordered UUIDv7 gives the best
// index locality) is used as is, any other string maps to a name-based UUIDv5.
// A retried command therefore yields the same event ID.
func EventID(requestID string) uuid.UUID {
	if id, err := uuid.Parse(requestID); err == nil && len(requestID) == 36 {
		return id
	}
	return uuid.NewSHA1(namespace, []byte(requestID))
}

// IDSpace derives event IDs from request IDs for one domain. Two domains'
// spaces never share an ID, whatever request IDs their clients send.
type IDSpace struct {
	ns     uuid.UUID
	legacy bool
}

// Space is the ID space of the domain named name: every request ID, a UUID
// or not, maps to a name-based UUIDv5 in a namespace of the domain's own.
func Space(name string) IDSpace {
	return IDSpace{ns: uuid.NewSHA1(namespace, []byte("heed-domain/"+name))}
}

// LegacySpace is EventID's space: the reference ledger's, from before
// domains had spaces of their own.
func LegacySpace() IDSpace { return IDSpace{legacy: true} }

// EventID derives the event ID of requestID in s; the zero IDSpace is
// LegacySpace.
func (s IDSpace) EventID(requestID string) uuid.UUID {
	if s.legacy || s.ns == uuid.Nil {
		return EventID(requestID)
	}
	return uuid.NewSHA1(s.ns, []byte(requestID))
}

// Fingerprint hashes what a command asked for (type, aggregate, payload bytes),
// leaving out what differs between retries of the same command (occurred_at), so
// that a request ID reused for different content can be told from a retry.
// Payloads must be marshaled deterministically for this to hold.
func Fingerprint(env *envelopev1.Envelope) int64 {
	// One hash over one buffer, on the stack for the usual small event: the
	// applier fingerprints every record it reads.
	var stack [256]byte
	b := append(stack[:0], env.GetType()...)
	b = append(b, 0)
	b = append(b, env.GetAggregateId()...)
	b = append(b, 0)
	b = append(b, env.GetPayload().GetValue()...)
	sum := sha256.Sum256(b)
	return int64(binary.BigEndian.Uint64(sum[:8]))
}
