package applier

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/pgarray"
)

// DecodeRecord is decode for the black-box tests: the event rec holds, or the
// reason it is poison ("" when it is not).
func DecodeRecord(h Handler, rec *kgo.Record) (Event, string) {
	d := decode(h, rec)
	return d.event, d.poison
}

// QuarantineRaw runs recs (of one partition of topic, in log order) through
// what a batch does with them before applying anything, in one transaction
// it commits: decode, read the partition's parked keys, sort (every
// decodable record counts as new: no lookup), and store the quarantined and
// parked records and the keys they park. It returns how many it stored.
func QuarantineRaw(ctx context.Context, pool *pgxpool.Pool, h Handler, topic string, recs []*kgo.Record) (int, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	pgarray.Register(conn.Conn().TypeMap())
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after COMMIT a no-op
	p := recs[0].Partition
	rows, err := tx.Query(ctx, parkedKeysSQL, topic, p)
	if err != nil {
		return 0, err
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[[]byte])
	if err != nil {
		return 0, err
	}
	parked := map[string]bool{}
	for _, h := range hashes {
		parked[string(h)] = true
	}
	decs := make([]decoded, len(recs))
	var items []dedup.Item
	for i, r := range recs {
		decs[i] = decode(h, r)
		if decs[i].poison == "" {
			ev := &decs[i].event
			items = append(items, dedup.Item{ID: ev.ID, Key: ev.AggregateID, Fingerprint: decs[i].fingerprint, KeyHash: dedup.KeyHash(ev.AggregateID)})
		}
	}
	out, err := sortBatch(decs, dedup.SkipLookup(items, 0), parked)
	if err != nil {
		return 0, err
	}
	b := &pgx.Batch{}
	queueQuarantine(b, topic, p, out.bad, out.blocked)
	if b.Len() > 0 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return 0, fmt.Errorf("store: %w", err)
		}
	}
	return len(out.bad), tx.Commit(ctx)
}

// BreakFetch pauses fetching partition p in the member's Kafka client behind
// its worker's back: what a lost resume, or a client that lost the
// partition's fetch, leaves behind. Call it only while Run runs.
func BreakFetch(a *Applier, p int32) {
	a.cl.PauseFetchPartitions(map[string][]int32{a.cfg.Topic: {p}})
}

// ResumelessRecovery makes the watchdog's first recovery (resume and
// re-seek) do nothing, so that only a rejoin brings a stalled partition back.
func ResumelessRecovery(a *Applier) { a.dog.resumeless.Store(true) }

// CompareAndSetSQL is the statement that moves a batch's applied position
// (casSQL): a test finds by it the batch whose transaction waits on a lock.
const CompareAndSetSQL = casSQL

// BindWindowSQL is the statement BindWindow records the dedup window with.
const BindWindowSQL = bindWindowSQL

// Queued is how many records partition p's worker holds queued, not yet
// taken into a batch; 0 when the member does not own p.
func Queued(a *Applier, p int32) int {
	a.mu.Lock()
	w := a.parts[p]
	a.mu.Unlock()
	if w == nil {
		return 0
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.queue)
}
