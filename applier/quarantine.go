package applier

import (
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kgo"
)

// quarantined is a record that will not be applied, and why.
type quarantined struct {
	rec     *kgo.Record
	kind    string // "poison" or "conflict"
	reason  string
	eventID *uuid.UUID
}

// queueQuarantine queues onto b the statement that stores records with their
// raw bytes, position and reason; b must be sent in the batch's transaction. It
// queues nothing when qs is empty.
func queueQuarantine(b *pgx.Batch, topic string, qs []quarantined) {
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
	)
	for i, q := range qs {
		parts[i], offsets[i], kinds[i], reasons[i] = q.rec.Partition, q.rec.Offset, q.kind, q.reason
		keys[i], values[i] = q.rec.Key, q.rec.Value
		if q.eventID != nil {
			id := [16]byte(*q.eventID)
			ids[i] = &id
		}
	}
	b.Queue(`INSERT INTO quarantine (topic, partition, "offset", kind, reason, event_id, key, value)
SELECT $1, * FROM unnest($2::int[], $3::int8[], $4::text[], $5::text[], $6::uuid[], $7::bytea[], $8::bytea[])
ON CONFLICT (topic, partition, "offset") DO NOTHING`, topic, parts, offsets, kinds, reasons, ids, keys, values)
}
