package applier

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
)

// The kinds of quarantined records.
const (
	// kindPoison is a record that can never apply as it is (undecodable,
	// invalid, rejected by the Handler, failing alone in Postgres). It parks
	// its key until an operator re-drives or drops it.
	kindPoison = "poison"
	// kindConflict is a command whose request ID was used before with other
	// content: the first command stands. It is a decided outcome and parks
	// nothing.
	kindConflict = "conflict"
	// kindParked is a record of a key that has a poison record before it in
	// the partition: held, in log order, until the poison one is re-driven or
	// dropped.
	kindParked = "parked"
)

// quarantined is a record that will not be applied now, and why.
type quarantined struct {
	rec *kgo.Record
	// at is the record's effective time (see recordTimes).
	at      time.Time
	kind    string
	reason  string
	eventID *uuid.UUID
}

// sorted is a batch sorted by what happens to each record.
type sorted struct {
	// fresh are the new events to apply, in log order, and items their
	// dedup items.
	fresh []Event
	items []dedup.Item
	// superseded marks, by index in fresh, the new events whose event is
	// new again later in the batch (see dedup.Lookup.Superseded): applied,
	// but only the later one's processed row is recorded.
	superseded map[int]bool
	// bad are the records to quarantine or park.
	bad []quarantined
	// blocked are the keys that a poison record of this batch parks from now
	// on (parked keys the database knew before are not in it).
	blocked                          [][]byte
	dups, conflicts, poison, parkedN int64
}

// sortBatch splits a batch by what decoding, the dedup lookup and the parked keys
// found, in log order: a poison record is quarantined and parks its key, a
// record of a parked key is parked, and the others are new, duplicates or
// conflicts. lookup holds one item per decodable record, in order; parked
// holds the keys parked before the batch, and gets those this batch parks.
func sortBatch(decs []decoded, lookup *dedup.Lookup, parked map[string]bool) (sorted, error) {
	var out sorted
	j := 0
	for i := range decs {
		d := &decs[i]
		var key string // the key's hash, when it matters: most batches meet no parked key
		if d.poison != "" || len(parked) > 0 {
			key = parkKey(d.rec.Key)
		}
		if d.poison != "" {
			out.bad = append(out.bad, quarantined{rec: d.rec, at: d.at, kind: kindPoison, reason: d.poison, eventID: d.idOrNil()})
			out.poison++
			if !parked[key] {
				if parked == nil {
					parked = make(map[string]bool)
				}
				parked[key] = true
				out.blocked = append(out.blocked, d.rec.Key)
			}
			continue
		}
		if parked[key] {
			lookup.Exclude(j)
			out.bad = append(out.bad, quarantined{rec: d.rec, at: d.at, kind: kindParked, eventID: d.idOrNil(),
				reason: fmt.Sprintf("parked behind a quarantined record of key %s in partition %d: re-drive or drop it (heed quarantine)", clip(d.rec.Key), d.rec.Partition)})
			out.parkedN++
		}
		j++
	}
	statuses, err := lookup.Statuses()
	if err != nil {
		return sorted{}, err
	}
	out.fresh = make([]Event, 0, len(statuses))
	j = 0
	for i := range decs {
		d := &decs[i]
		if d.poison != "" {
			continue
		}
		switch statuses[j] {
		case dedup.New:
			if lookup.Superseded(j) {
				if out.superseded == nil {
					out.superseded = make(map[int]bool)
				}
				out.superseded[len(out.fresh)] = true
			}
			out.fresh = append(out.fresh, d.event)
			out.items = append(out.items, lookup.Item(j))
		case dedup.Duplicate:
			out.dups++
		case dedup.Conflict:
			out.conflicts++
			out.bad = append(out.bad, quarantined{rec: d.rec, at: d.at, kind: kindConflict, eventID: &d.event.ID,
				reason: conflictReason(d.event.RequestID)})
		}
		j++
	}
	return out, nil
}

// conflictReason is why a command whose request ID was used before with other
// content is quarantined.
func conflictReason(requestID string) string {
	return fmt.Sprintf("request_id %s was reused with different content; the first command with it stands", clip(requestID))
}

// failsInDatabase is why a record that fails alone in Postgres, with an error
// an event may cause, is quarantined.
func failsInDatabase(err error) string {
	return storable("applying it fails in the database: " + err.Error())
}

// idOrNil is the record's event ID, if its envelope had a valid one.
func (d *decoded) idOrNil() *uuid.UUID {
	if !d.hasID {
		return nil
	}
	id := d.event.ID
	return &id
}

// queueQuarantine queues onto b the statements that store quarantined and
// parked records with their raw bytes (key, value and headers, whole),
// position and reason, and that park the keys newly blocked; b must be sent in
// the batch's transaction. It queues nothing when there is nothing to store.
// No record's shape can make them fail: the indexes hold the keys' hashes
// (migration 00004), never the raw bytes, and the reasons are storable text of
// bounded length. A failure of either is returned wrapped in a
// *quarantineError, which the batch retries with backoff like a transient one.
func queueQuarantine(b *pgx.Batch, topic string, partition int32, qs []quarantined, blocked [][]byte) {
	if len(blocked) > 0 {
		keys := make([][]byte, len(blocked))
		for i, k := range blocked {
			keys[i] = nonNil(k)
		}
		b.Queue(`INSERT INTO parked_keys (topic, partition, key) SELECT $1, $2, * FROM unnest($3::bytea[])
ON CONFLICT DO NOTHING`, topic, partition, keys).Fn = storeQuarantine("park the keys of poison records")
	}
	if len(qs) == 0 {
		return
	}
	var (
		parts   = make([]int32, len(qs))
		offsets = make([]int64, len(qs))
		kinds   = make([]string, len(qs))
		reasons = make([]string, len(qs))
		ids     = make([]*[16]byte, len(qs))
		keys    = make([][]byte, len(qs))
		values  = make([][]byte, len(qs))
		headers = make([][]byte, len(qs))
		times   = make([]*time.Time, len(qs))
	)
	for i, q := range qs {
		parts[i], offsets[i], kinds[i], reasons[i] = q.rec.Partition, q.rec.Offset, q.kind, storable(q.reason)
		keys[i], values[i], headers[i] = nonNil(q.rec.Key), q.rec.Value, encodeHeaders(q.rec.Headers)
		if !q.at.IsZero() {
			times[i] = &qs[i].at
		}
		if q.eventID != nil {
			id := [16]byte(*q.eventID)
			ids[i] = &id
		}
	}
	b.Queue(`INSERT INTO quarantine (topic, partition, "offset", kind, reason, event_id, key, value, headers, record_time)
SELECT $1, * FROM unnest($2::int[], $3::int8[], $4::text[], $5::text[], $6::uuid[], $7::bytea[], $8::bytea[], $9::bytea[], $10::timestamptz[])
ON CONFLICT (topic, partition, "offset") DO NOTHING`, topic, parts, offsets, kinds, reasons, ids, keys, values, headers, times).Fn = storeQuarantine("store quarantined records")
}

// quarantineError is a failure to store quarantined or parked records: never
// the records' fault (nothing about their shape can make it fail), so the
// batch is retried with backoff, whatever the error's class, and counted
// apart ("quarantine-store").
type quarantineError struct {
	what string
	err  error
}

func (e *quarantineError) Error() string { return e.what + ": " + e.err.Error() }
func (e *quarantineError) Unwrap() error { return e.err }

// storeQuarantine is the callback of a quarantine statement: it wraps the
// statement's failure in a *quarantineError.
func storeQuarantine(what string) func(pgx.BatchResults) error {
	return func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return &quarantineError{what: what, err: err}
		}
		return nil
	}
}

// nonNil is k, or an empty key for a record without one: parking treats all
// records without a key as one key.
func nonNil(k []byte) []byte {
	if k == nil {
		return []byte{}
	}
	return k
}

// parkKey is what parking knows a key by: its SHA-256, as Postgres computes
// parked_keys.key_hash (a record without a key has the empty key's).
func parkKey(k []byte) string {
	sum := sha256.Sum256(k)
	return string(sum[:])
}

// encodeHeaders encodes hs as Kafka encodes a record's headers (without their
// count): for each, the key's length as a zigzag varint, the key, the value's
// length (-1 for a null value) and the value. nil when there are none.
func encodeHeaders(hs []kgo.RecordHeader) []byte {
	if len(hs) == 0 {
		return nil
	}
	n := 0
	for _, h := range hs {
		n += 2*binary.MaxVarintLen64 + len(h.Key) + len(h.Value)
	}
	b := make([]byte, 0, n)
	for _, h := range hs {
		b = binary.AppendVarint(b, int64(len(h.Key)))
		b = append(b, h.Key...)
		if h.Value == nil {
			b = binary.AppendVarint(b, -1)
			continue
		}
		b = binary.AppendVarint(b, int64(len(h.Value)))
		b = append(b, h.Value...)
	}
	return b
}

// decodeHeaders is encodeHeaders' inverse; it reports malformed input.
func decodeHeaders(b []byte) ([]kgo.RecordHeader, error) {
	var hs []kgo.RecordHeader
	for len(b) > 0 {
		k, rest, err := field(b, false)
		if err != nil {
			return nil, fmt.Errorf("header %d key: %w", len(hs), err)
		}
		v, rest, err := field(rest, true)
		if err != nil {
			return nil, fmt.Errorf("header %d value: %w", len(hs), err)
		}
		hs = append(hs, kgo.RecordHeader{Key: string(k), Value: v})
		b = rest
	}
	return hs, nil
}

// field reads one length-prefixed field of encoded headers.
func field(b []byte, nullable bool) (f, rest []byte, err error) {
	n, w := binary.Varint(b)
	switch {
	case w <= 0:
		return nil, nil, errors.New("bad length")
	case n == -1 && nullable:
		return nil, b[w:], nil
	case n < 0 || n > int64(len(b)-w):
		return nil, nil, fmt.Errorf("length %d out of range", n)
	}
	return b[w : w+int(n) : w+int(n)], b[w+int(n):], nil
}

// clipBytes is how many bytes of a record's text (a key, a request ID) a
// reason quotes.
const clipBytes = 256

// clip quotes s for a reason, up to clipBytes of it: a key may be a MiB long.
func clip[T ~string | ~[]byte](s T) string {
	if len(s) <= clipBytes {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:clipBytes], len(s))
}
