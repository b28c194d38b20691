package applier

import (
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
		key := string(d.rec.Key)
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
				reason: fmt.Sprintf("parked behind a quarantined record of key %q in partition %d: re-drive or drop it (heed quarantine)", d.rec.Key, d.rec.Partition)})
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
	return fmt.Sprintf("request_id %q was reused with different content; the first command with it stands", requestID)
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
// parked records with their raw bytes, position and reason, and that park the
// keys newly blocked; b must be sent in the batch's transaction. It queues
// nothing when there is nothing to store.
func queueQuarantine(b *pgx.Batch, topic string, partition int32, qs []quarantined, blocked [][]byte) {
	if len(blocked) > 0 {
		keys := make([][]byte, len(blocked))
		for i, k := range blocked {
			keys[i] = nonNil(k)
		}
		b.Queue(`INSERT INTO parked_keys (topic, partition, key) SELECT $1, $2, * FROM unnest($3::bytea[])
ON CONFLICT DO NOTHING`, topic, partition, keys)
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
		times   = make([]*time.Time, len(qs))
	)
	for i, q := range qs {
		parts[i], offsets[i], kinds[i], reasons[i] = q.rec.Partition, q.rec.Offset, q.kind, q.reason
		keys[i], values[i] = nonNil(q.rec.Key), q.rec.Value
		if !q.at.IsZero() {
			times[i] = &qs[i].at
		}
		if q.eventID != nil {
			id := [16]byte(*q.eventID)
			ids[i] = &id
		}
	}
	b.Queue(`INSERT INTO quarantine (topic, partition, "offset", kind, reason, event_id, key, value, record_time)
SELECT $1, * FROM unnest($2::int[], $3::int8[], $4::text[], $5::text[], $6::uuid[], $7::bytea[], $8::bytea[], $9::timestamptz[])
ON CONFLICT (topic, partition, "offset") DO NOTHING`, topic, parts, offsets, kinds, reasons, ids, keys, values, times)
}

// nonNil is k, or an empty key for a record without one: parking treats all
// records without a key as one key.
func nonNil(k []byte) []byte {
	if k == nil {
		return []byte{}
	}
	return k
}
