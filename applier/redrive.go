package applier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/dedup"
)

// ErrNotQuarantined is returned by Redrive and Drop when no open poison or
// parked record is at the position given.
var ErrNotQuarantined = errors.New("no open quarantined or parked record there")

// RedriveResult is what a re-drive did with a key's open records.
type RedriveResult struct {
	// Key is the key re-driven.
	Key []byte
	// Applied counts the records applied, in log order; Duplicates those
	// whose event was applied before (a retry), Conflicts those whose request
	// ID was used before with other content.
	Applied, Duplicates, Conflicts int
	// Dropped is the offset of the record Drop dropped, or -1.
	Dropped int64
	// Poison is the offset of the record that still cannot apply, or -1: it
	// stays quarantined (with Reason) and the key's later records stay
	// parked behind it.
	Poison int64
	Reason string
	// Parked counts the records still parked behind Poison.
	Parked int
}

// Redrive applies again, in log order, the open records of the key of the
// quarantined or parked record at partition/offset of topic: typically after
// a fix (a binary that knows a new event type, a corrected constraint). Each
// record is decoded and applied through h in a transaction of its own nested
// in one that locks the partition's applied position, so that the partition's
// applier waits meanwhile and finds the key released afterwards: its records
// after the re-driven ones apply after them, keeping the key's order. Applying
// is idempotent: an event applied before counts as a duplicate. The first
// record that still cannot apply (poison, an EventError, a data error in
// Postgres) stays quarantined with its new reason, and the key's later records
// stay parked behind it. Once none is left open, the key is released.
//
// Follow-ups the re-driven events emit go to the outbox like the applier's,
// with IDs in the legacy ID space (envelope.LegacySpace) and the default
// size bound: the applier, carrying out heed quarantine's decisions, uses its
// Config's.
//
// Redrive and Drop change the projection directly: a projection rebuilt from
// the topic does not see the decision. heed quarantine writes it to the topic
// instead (DecisionRecord), and the applier carries it out when it reaches it
// by the same code, so that a rebuild decides alike; call these directly only
// on a projection that will never be rebuilt, or in tests.
//
// Errors: ErrNotQuarantined when no open poison or parked record is at
// partition/offset; any other failure (the database, a transient apply
// failure) rolls everything back and is returned wrapped: run it again.
func Redrive(ctx context.Context, pool *pgxpool.Pool, h Handler, topic string, partition int32, offset int64) (RedriveResult, error) {
	return resolve(ctx, pool, h, topic, partition, offset, "")
}

// Drop marks the quarantined record at partition/offset of topic as dropped —
// an operator's decision that it will never apply — with note as the reason,
// records its event ID (if its envelope has one) as processed so that a retry
// of the command is a duplicate, and then re-drives the key's later parked
// records as Redrive does. Errors as Redrive's.
func Drop(ctx context.Context, pool *pgxpool.Pool, h Handler, topic string, partition int32, offset int64, note string) (RedriveResult, error) {
	if note == "" {
		note = "dropped by an operator"
	}
	return resolve(ctx, pool, h, topic, partition, offset, note)
}

// openRecord is an open row of the quarantine.
type openRecord struct {
	offset int64
	key    []byte
	value  []byte
	// at is the record's effective time as the applier stored it; zero for
	// a record quarantined before record times were stored.
	at time.Time
}

// record is r as the record it was read from.
func (r openRecord) record(topic string, partition int32) *kgo.Record {
	return &kgo.Record{Topic: topic, Partition: partition, Offset: r.offset, Key: r.key, Value: r.value}
}

func resolve(ctx context.Context, pool *pgxpool.Pool, h Handler, topic string, partition int32, offset int64, dropNote string) (RedriveResult, error) {
	var res RedriveResult
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// The partition's applier locks this row first in every batch.
		var pos int64
		err := tx.QueryRow(ctx, `SELECT next_offset FROM applied_positions WHERE topic = $1 AND partition = $2 FOR UPDATE`, topic, partition).Scan(&pos)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("lock the partition's applied position: %w", err)
		}
		res, err = resolveTx(ctx, tx, h, emitConfig{}, topic, partition, offset, dropNote)
		return err
	})
	if err != nil {
		return RedriveResult{}, err
	}
	return res, nil
}

// resolveTx re-drives (dropNote "") or drops the open record at
// partition/offset in tx, whose caller holds the partition's applied
// position locked, as Redrive and Drop describe.
func resolveTx(ctx context.Context, tx pgx.Tx, h Handler, ec emitConfig, topic string, partition int32, offset int64, dropNote string) (RedriveResult, error) {
	res := RedriveResult{Dropped: -1, Poison: -1}
	var key []byte
	err := tx.QueryRow(ctx, `SELECT key FROM quarantine WHERE topic = $1 AND partition = $2 AND "offset" = $3
AND state = 'open' AND kind IN ('poison', 'parked')`, topic, partition, offset).Scan(&key)
	if errors.Is(err, pgx.ErrNoRows) {
		return res, fmt.Errorf("%w: topic %s partition %d offset %d", ErrNotQuarantined, topic, partition, offset)
	}
	if err != nil {
		return res, fmt.Errorf("read the quarantined record: %w", err)
	}
	res.Key = key
	recs, err := openRecords(ctx, tx, topic, partition, key)
	if err != nil {
		return res, err
	}
	// Decide as the applier would have, with the projection's window
	// and each record's own time.
	window, _, err := RecordedWindow(ctx, tx)
	if err != nil {
		return res, err
	}
	if dropNote != "" {
		if err := drop(ctx, tx, h, topic, partition, offset, dropNote, recs, window); err != nil {
			return res, err
		}
		res.Dropped = offset
		recs = without(recs, offset)
	}
	for i, r := range recs {
		reason, err := redriveOne(ctx, tx, h, ec, topic, partition, r, window, &res)
		if err != nil {
			return res, err
		}
		if reason != "" {
			res.Poison, res.Reason, res.Parked = r.offset, reason, len(recs)-i-1
			return res, markPoison(ctx, tx, topic, partition, r.offset, reason)
		}
	}
	// Parking knows the key by its hash: another key with the same hash
	// (a collision) and open records of its own keeps it parked.
	if _, err := tx.Exec(ctx, `DELETE FROM parked_keys WHERE topic = $1 AND partition = $2 AND key_hash = sha256($3)
AND NOT EXISTS (SELECT FROM quarantine WHERE topic = $1 AND partition = $2 AND key_hash = sha256($3) AND key <> $3
AND state = 'open' AND kind IN ('poison', 'parked'))`, topic, partition, key); err != nil {
		return res, fmt.Errorf("release the key: %w", err)
	}
	return res, nil
}

// openRecords reads the open poison and parked records of key, in log order.
func openRecords(ctx context.Context, tx pgx.Tx, topic string, partition int32, key []byte) ([]openRecord, error) {
	rows, err := tx.Query(ctx, `SELECT "offset", value, record_time FROM quarantine
WHERE topic = $1 AND partition = $2 AND key_hash = sha256($3) AND key = $3 AND state = 'open' AND kind IN ('poison', 'parked')
ORDER BY "offset"`, topic, partition, key)
	if err != nil {
		return nil, fmt.Errorf("read the key's quarantined records: %w", err)
	}
	recs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (openRecord, error) {
		r := openRecord{key: key}
		var at *time.Time
		err := row.Scan(&r.offset, &r.value, &at)
		if at != nil {
			r.at = *at
		}
		return r, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the key's quarantined records: %w", err)
	}
	return recs, nil
}

func without(recs []openRecord, offset int64) []openRecord {
	out := recs[:0:0]
	for _, r := range recs {
		if r.offset != offset {
			out = append(out, r)
		}
	}
	return out
}

// redriveOne applies r in a savepoint of tx and marks it redriven; it returns
// a reason, and applies nothing, when r still cannot apply.
func redriveOne(ctx context.Context, tx pgx.Tx, h Handler, ec emitConfig, topic string, partition int32, r openRecord, window time.Duration, res *RedriveResult) (string, error) {
	d := decode(h, r.record(topic, partition))
	if d.poison != "" {
		return d.poison, nil
	}
	sp, err := tx.Begin(ctx)
	if err != nil {
		return "", fmt.Errorf("savepoint: %w", err)
	}
	d.event.Time = r.at
	item := dedup.Item{ID: d.event.ID, Key: d.event.AggregateID, Fingerprint: d.fingerprint, Time: r.at}
	statuses, err := dedup.ClaimWithin(ctx, sp, []dedup.Item{item}, window)
	if err == nil && statuses[0] == dedup.New {
		var results []Result
		if results, err = h.Apply(ctx, sp, []Event{d.event}); err == nil && results != nil {
			var rows []dedup.Row
			if rows, err = processedRows([]dedup.Item{item}, results); err == nil {
				err = dedup.SetOutcome(ctx, sp, rows[0])
			}
			if err == nil {
				err = insertOutbox(ctx, sp, ec, topic, d.event, results)
			}
		}
	}
	if err != nil {
		_ = sp.Rollback(ctx) // the outer transaction ends either way
		switch Classify(err) {
		case Poison:
			var ee *EventError
			errors.As(err, &ee)
			return storable(ee.Reason), nil
		case EventCaused:
			return failsInDatabase(err), nil
		}
		return "", fmt.Errorf("apply offset %d: %w", r.offset, err)
	}
	if err := sp.Commit(ctx); err != nil {
		return "", fmt.Errorf("release savepoint: %w", err)
	}
	kind, reason := "", ""
	switch statuses[0] {
	case dedup.New:
		res.Applied++
	case dedup.Duplicate:
		res.Duplicates++
	case dedup.Conflict:
		res.Conflicts++
		kind = kindConflict
		reason = conflictReason(d.event.RequestID)
	}
	_, err = tx.Exec(ctx, `UPDATE quarantine SET state = CASE WHEN $5 = '' THEN 'redriven' ELSE 'open' END,
kind = coalesce(nullif($5, ''), kind), reason = coalesce(nullif($6, ''), reason), event_id = $4
WHERE topic = $1 AND partition = $2 AND "offset" = $3`, topic, partition, r.offset, [16]byte(d.event.ID), kind, reason)
	if err != nil {
		return "", fmt.Errorf("mark offset %d re-driven: %w", r.offset, err)
	}
	return "", nil
}

// markPoison makes the open record at offset the key's poison record, with
// reason: the records after it stay parked.
func markPoison(ctx context.Context, tx pgx.Tx, topic string, partition int32, offset int64, reason string) error {
	_, err := tx.Exec(ctx, `UPDATE quarantine SET kind = 'poison', reason = $4 WHERE topic = $1 AND partition = $2 AND "offset" = $3`,
		topic, partition, offset, reason)
	if err != nil {
		return fmt.Errorf("mark offset %d poison: %w", offset, err)
	}
	return nil
}

// drop marks the record at offset dropped and records its event ID, if its
// envelope has a valid one, as processed.
func drop(ctx context.Context, tx pgx.Tx, h Handler, topic string, partition int32, offset int64, note string, recs []openRecord, window time.Duration) error {
	for _, r := range recs {
		if r.offset != offset {
			continue
		}
		d := decode(h, r.record(topic, partition))
		if key := string(r.key); d.hasID && checkText(key) == "" {
			item := dedup.Item{ID: d.event.ID, Key: key, Fingerprint: d.fingerprint, Time: r.at}
			st, err := dedup.ClaimWithin(ctx, tx, []dedup.Item{item}, window)
			if err == nil && st[0] == dedup.New {
				err = dedup.SetOutcome(ctx, tx, dedup.Row{Item: item, Outcome: dedup.Dropped, Reason: storable(note)})
			}
			if err != nil {
				return fmt.Errorf("record the dropped event as processed: %w", err)
			}
		}
	}
	_, err := tx.Exec(ctx, `UPDATE quarantine SET state = 'dropped', reason = reason || '; ' || $4
WHERE topic = $1 AND partition = $2 AND "offset" = $3`, topic, partition, offset, storable(note))
	if err != nil {
		return fmt.Errorf("mark offset %d dropped: %w", offset, err)
	}
	return nil
}
