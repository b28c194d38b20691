// Package dedup keeps the processed-event table: the record of every event ID
// whose effect is in the database. Claiming a batch of IDs inside the transaction
// that applies them is what makes a redelivered event change nothing.
package dedup

import (
	"context"
	"crypto/md5" //nolint:gosec // a spread of keys, not a security measure
	"embed"
	"encoding/binary"
	"fmt"
	"io/fs"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/heed-dev/heed/pgarray"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations that create the processed-event table.
var Migrations = mustSub(migrations, "migrations")

func mustSub(f fs.FS, dir string) fs.FS {
	sub, err := fs.Sub(f, dir)
	if err != nil {
		panic(err)
	}
	return sub
}

// Status is what a claim found for one event ID.
type Status uint8

const (
	// New means the ID was not processed before: apply the event.
	New Status = iota + 1
	// Duplicate means the ID was processed before with the same content: skip it.
	Duplicate
	// Conflict means the ID was processed before with different content: the
	// client reused a request ID for another command. Skip it and report it.
	Conflict
	// Excluded means the caller took the item out of the claim (Lookup.Exclude):
	// it is neither looked at nor recorded.
	Excluded
)

func (s Status) String() string {
	switch s {
	case New:
		return "new"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	case Excluded:
		return "excluded"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Item is one event to claim: its ID, the aggregate it belongs to (the record
// key) and a fingerprint of its content. An event is identified by its ID
// within its aggregate: the same ID under another key is another event.
type Item struct {
	ID          uuid.UUID
	Key         string
	Fingerprint int64
	// KeyHash is KeyHash(Key) when the caller has it already, or 0: then
	// it is computed where needed.
	KeyHash int64
	// Time is the event's record time: the partition's effective time at
	// its record (the latest record timestamp up to it, in log order, so
	// that it never goes backwards), the same on every replay. The dedup
	// window is measured in it, and retention prunes by it; zero: unknown,
	// always within the window and never pruned.
	Time time.Time
}

// hash is the item's key hash.
func (it *Item) hash() int64 {
	if it.KeyHash != 0 {
		return it.KeyHash
	}
	return KeyHash(it.Key)
}

// KeyHash is how the processed-event table identifies an aggregate: the first
// 8 bytes of the key's MD5, big-endian, as an int64, and never 0, which marks
// rows recorded before keys were ("aggregate unknown"). Postgres computes the
// same with ('x' || left(md5(key), 16))::bit(64)::bigint, mapping 0 to 1.
func KeyHash(key string) int64 {
	sum := md5.Sum([]byte(key))
	h := int64(binary.BigEndian.Uint64(sum[:8]))
	if h == 0 {
		return 1
	}
	return h
}

// ref is what identifies a processed event: its ID and its key's hash.
type ref struct {
	id  uuid.UUID
	key int64
}

// Outcome is what became of a processed event, stored with its ID. The values
// are those of heed.command.v1.CommandStatus (gen/heed/command/v1), the
// domain-neutral status every domain's GetCommandResult answers (package
// command reads them as they are).
type Outcome int16

const (
	// Applied: the domain applied the event.
	Applied Outcome = 2
	// Rejected: the domain refused it (a business rule); the reason says why.
	Rejected Outcome = 3
	// Dropped: an operator dropped it from the quarantine; it never applies.
	Dropped Outcome = 6
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Rejected:
		return "rejected"
	case Dropped:
		return "dropped"
	}
	return fmt.Sprintf("Outcome(%d)", int16(o))
}

// Row is one processed event with its outcome, as Record writes it and Results
// reads it.
type Row struct {
	Item
	Outcome Outcome
	// Reason says why the event was rejected or dropped; empty when applied.
	Reason string
	// Result is the domain's result, e.g. a marshaled protobuf message; nil
	// for none.
	Result []byte
}

// Querier is what Claim needs: a pgx.Tx (or the connection of a transaction
// begun by hand), so that the claim commits or rolls back with the state
// change it guards.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// claimSQL inserts the events not recorded yet, under their key or under no
// key (a row recorded before rows carried keys), and replaces a row of the
// same event that expired: whose event_time is more than $6 microseconds
// before the event's ($6 <= 0: no window).
const claimSQL = `INSERT INTO processed_events AS p (event_id, key_hash, aggregate, fingerprint, event_time)
SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::timestamptz[]) AS u(event_id, key_hash, aggregate, fingerprint, event_time)
WHERE NOT EXISTS (SELECT 1 FROM processed_events p WHERE p.event_id = u.event_id AND p.key_hash = 0)
ON CONFLICT (event_id, key_hash) DO UPDATE SET aggregate = excluded.aggregate, fingerprint = excluded.fingerprint,
  status = 2, reason = '', result = NULL, event_time = excluded.event_time
WHERE $6::int8 > 0 AND excluded.event_time - p.event_time > $6::int8 * interval '1 microsecond'
RETURNING event_id, key_hash`

// fingerprintsSQL reads what the table holds for a batch's IDs, under any key:
// the primary key's first column finds them.
const fingerprintsSQL = `SELECT event_id, key_hash, fingerprint, event_time FROM processed_events WHERE event_id = ANY($1::uuid[])`

// Claim is ClaimWithin with no window: a processed row stands forever.
func Claim(ctx context.Context, q Querier, items []Item) ([]Status, error) {
	return ClaimWithin(ctx, q, items, 0)
}

// ClaimWithin records items as processed, with the outcome Applied, and
// returns, for each item in order, whether it is New, a Duplicate or a
// Conflict, by the rule of Lookup.Statuses with window (0: none): a row
// recorded more than window before an item's Time is replaced by the item's.
// When an event occurs twice in items, the first occurrence is the one that
// can be New, and a later one compares with it. Only when some items are not
// new does it run a second statement to compare fingerprints. A transaction
// claiming an event that a concurrent one claimed waits for it and then finds
// it processed; no retry is needed. SetOutcome records another outcome later
// in the transaction. QueueLookup and Record do the same work cheaper for
// Postgres (the applier's hot path), but a concurrent claim of the same event
// fails them.
//
// q must be the transaction that applies the new items: if it rolls back, the
// claim rolls back too. Errors are wrapped with what failed; the transaction
// must then be rolled back. ClaimWithin is as safe for concurrent use as q is.
func ClaimWithin(ctx context.Context, q Querier, items []Item, window time.Duration) ([]Status, error) {
	if len(items) == 0 {
		return nil, nil
	}
	keys := make([]int64, len(items))
	for i := range items {
		keys[i] = items[i].hash()
	}
	out := make([]Status, len(items))
	// An event that occurs again in items is claimed in a later round, a
	// statement of its own, which finds the earlier occurrence's row.
	for todo := allIndexes(len(items)); len(todo) > 0; {
		round, later := splitRound(items, keys, todo)
		if err := claimRound(ctx, q, items, keys, round, window, out); err != nil {
			return nil, err
		}
		todo = later
	}
	return out, nil
}

func allIndexes(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// splitRound splits todo into the first occurrence of each event and the
// rest.
func splitRound(items []Item, keys []int64, todo []int) (round, later []int) {
	seen := make(map[ref]bool, len(todo))
	for _, i := range todo {
		r := ref{items[i].ID, keys[i]}
		if seen[r] {
			later = append(later, i)
			continue
		}
		seen[r] = true
		round = append(round, i)
	}
	return round, later
}

// claimRound claims items[round], which hold each event once, into out.
func claimRound(ctx context.Context, q Querier, items []Item, keys []int64, round []int, window time.Duration, out []Status) error {
	ids := make(pgarray.UUIDs, len(round))
	hashes := make(pgarray.Int8s, len(round))
	aggs := make(pgarray.Texts, len(round))
	fps := make(pgarray.Int8s, len(round))
	times := make([]*time.Time, len(round))
	for j, i := range round {
		it := &items[i]
		ids[j], hashes[j], aggs[j], fps[j] = it.ID, keys[i], it.Key, it.Fingerprint
		if !it.Time.IsZero() {
			times[j] = &it.Time
		}
	}
	rows, err := q.Query(ctx, claimSQL, ids, hashes, aggs, fps, times, window.Microseconds())
	if err != nil {
		return fmt.Errorf("claim event ids: %w", err)
	}
	inserted, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (ref, error) {
		var (
			id  [16]byte
			key int64
		)
		err := row.Scan(&id, &key)
		return ref{id, key}, err
	})
	if err != nil {
		return fmt.Errorf("claim event ids: %w", err)
	}
	isNew := make(map[ref]bool, len(inserted))
	for _, r := range inserted {
		isNew[r] = true
	}
	var seen pgarray.UUIDs
	for _, i := range round {
		if isNew[ref{items[i].ID, keys[i]}] {
			out[i] = New
			continue
		}
		seen = append(seen, items[i].ID)
	}
	if len(seen) == 0 {
		return nil
	}
	stored, err := collectFingerprints(ctx, q, seen)
	if err != nil {
		return fmt.Errorf("read fingerprints of processed events: %w", err)
	}
	for _, i := range round {
		it := &items[i]
		if out[i] == New {
			continue
		}
		e, ok := stored.find(it.ID, keys[i])
		switch {
		case !ok:
			return fmt.Errorf("claim event ids: %s (key %q) neither inserted nor found", it.ID, it.Key)
		case e.fp == it.Fingerprint:
			out[i] = Duplicate
		default:
			out[i] = Conflict
		}
	}
	return nil
}

// Execer is what SetOutcome needs: the transaction that claimed the event.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// SetOutcome records the outcome of an event claimed earlier in the same
// transaction (Claim records Applied with no reason or result). It fails
// when no such event is recorded.
func SetOutcome(ctx context.Context, q Execer, r Row) error {
	tag, err := q.Exec(ctx, `UPDATE processed_events SET status = $3, reason = $4, result = $5 WHERE event_id = $1 AND key_hash = $2`,
		[16]byte(r.ID), r.hash(), int16(r.Outcome), r.Reason, r.Result)
	if err != nil {
		return fmt.Errorf("record the outcome of event %s: %w", r.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("record the outcome of event %s (key %q): the event is not recorded as processed", r.ID, r.Key)
	}
	return nil
}

// Results reads what the table holds for event id: one row per aggregate the
// ID was applied to (usually one, none while it is not processed), ordered by
// key. Rows recorded before keys were have an empty Key.
func Results(ctx context.Context, q Querier, id uuid.UUID) ([]Row, error) {
	rows, err := q.Query(ctx, `SELECT coalesce(aggregate, ''), fingerprint, status, reason, result FROM processed_events
WHERE event_id = $1 ORDER BY aggregate`, [16]byte(id))
	if err != nil {
		return nil, fmt.Errorf("read the outcome of event %s: %w", id, err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Row, error) {
		r := Row{Item: Item{ID: id}}
		var status int16
		err := row.Scan(&r.Key, &r.Fingerprint, &status, &r.Reason, &r.Result)
		r.Outcome = Outcome(status)
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the outcome of event %s: %w", id, err)
	}
	return out, nil
}

// stored is what the table holds for a batch's IDs.
type stored map[ref]entry

// find returns what is recorded for id under the key hashed to key, or under
// no key (a row recorded before keys were).
func (s stored) find(id uuid.UUID, key int64) (entry, bool) {
	if e, ok := s[ref{id, key}]; ok {
		return e, true
	}
	e, ok := s[ref{id, 0}]
	return e, ok
}

// collectFingerprints reads the stored fingerprints of ids.
func collectFingerprints(ctx context.Context, q Querier, ids pgarray.UUIDs) (stored, error) {
	rows, err := q.Query(ctx, fingerprintsSQL, ids)
	if err != nil {
		return nil, err
	}
	return scanFingerprints(rows, len(ids))
}

// scanFingerprints reads the rows of fingerprintsSQL, about n of them, and
// closes them. It returns every row or an error, never part of a result.
func scanFingerprints(rows pgx.Rows, n int) (stored, error) {
	defer rows.Close()
	got := make(stored, n)
	var (
		id  [16]byte
		key int64
		e   entry
		ts  pgtype.Timestamptz
	)
	for rows.Next() {
		e = entry{}
		if err := rows.Scan(&id, &key, &e.fp, &ts); err != nil {
			return nil, err
		}
		e.scanTime(ts)
		got[ref{id, key}] = e
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	return got, nil
}
