// Package audit checks a projection against its topic, the seeds' detection
// strategies as one pass: per partition the applied position against the
// topic's end (lag, or a projection ahead of its topic); events in the topic
// below the applied position that are neither processed nor quarantined
// (skipped: the promise broken); processed events with no event in the
// topic (applied from somewhere else); outcomes by count; and whether the
// projection is bound to this incarnation of the topic.
//
// It compares one moment of the projection with the topic: it opens a
// REPEATABLE READ transaction (one snapshot for the whole audit, as pg_dump
// does) and reads the applied positions in it first, then the topic's end
// offsets. Every processed row in the snapshot belongs to a record below a
// position read, hence below an end read after it, so records written and
// applied while the audit runs are neither orphans nor skipped nor "ahead";
// a position beyond an end read after it is a real loss.
//
// It reads the topic once, from its start to those end offsets, and streams each record's partition, offset, event ID and key
// hash into a temporary table by COPY, in chunks; the comparisons are SQL
// anti-joins there. Its memory is thus one chunk and the Kafka client's
// fetch buffers, whatever the topic's size. It is domain-agnostic: it reads
// only the envelope.
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/dedup"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	"github.com/heed-dev/heed/internal/lograte"
	"github.com/heed-dev/heed/topic"
)

// Config configures Run.
type Config struct {
	Brokers []string
	Topic   string
	// KafkaOpts are added to the Kafka client's options (TLS, SASL).
	KafkaOpts []kgo.Opt
	// ChunkRecords is how many records go to Postgres per COPY (default 20000).
	ChunkRecords int
	// Examples is how many skipped events and orphans the report lists (default 10).
	Examples int
	// Progress, if set, is called about once a second while the topic is read.
	Progress func(Progress)
	Logger   *slog.Logger
}

// Progress is how far the read of the topic is.
type Progress struct {
	Read, Total int64
	Rate        float64
	Elapsed     time.Duration
}

// Report is what an audit found.
type Report struct {
	Topic string `json:"topic"`
	// Identity is the topic incarnation the projection is bound to, and
	// Broker the one the broker has; IdentityProblem says why they do not
	// match ("" when they do).
	Identity        string `json:"identity"`
	Broker          string `json:"broker"`
	IdentityProblem string `json:"identity_problem,omitempty"`

	Partitions []PartitionReport `json:"partitions"`

	// Records is how many records were read; Duplicates how many of them
	// repeat an event (same ID, same key) of an earlier one.
	Records    int64 `json:"records"`
	Duplicates int64 `json:"duplicates"`
	// Decisions counts the control records read (operators' quarantine
	// decisions), which are not events and not in Records.
	Decisions int64 `json:"quarantine_decisions"`
	// Skipped counts events below the applied position that are neither
	// processed nor quarantined; SkippedExamples lists the first.
	Skipped         int64          `json:"skipped"`
	SkippedExamples []SkippedEvent `json:"skipped_examples,omitempty"`
	// Pruned counts events below the applied position written before the
	// retention cutoff (RetentionCutoff) whose processed rows are gone, as
	// retention meant.
	Pruned          int64      `json:"pruned_by_retention"`
	RetentionCutoff *time.Time `json:"retention_cutoff,omitempty"`
	// Orphans counts processed events with no event in the topic read;
	// OrphanExamples lists the first. With a topic whose start was deleted
	// (LogStart > 0 somewhere), processed events of the deleted part are
	// counted in OrphansBeforeStart instead, as expected.
	Orphans            int64         `json:"orphans"`
	OrphanExamples     []OrphanEvent `json:"orphan_examples,omitempty"`
	OrphansBeforeStart int64         `json:"orphans_before_log_start,omitempty"`
	// Outcomes counts processed events by outcome (applied, rejected,
	// dropped) and quarantined records by kind and state.
	Outcomes   map[string]int64 `json:"outcomes"`
	Quarantine map[string]int64 `json:"quarantine"`
	Took       time.Duration    `json:"took_ns"`
}

// PartitionReport is one partition's positions.
type PartitionReport struct {
	Partition int32 `json:"partition"`
	LogStart  int64 `json:"log_start"`
	End       int64 `json:"end"`
	Applied   int64 `json:"applied"`
	Lag       int64 `json:"lag"`
	// Ahead is set when the applied position lies past the end: the
	// projection was built from another topic, or the broker lost records.
	Ahead bool `json:"ahead,omitempty"`
}

// SkippedEvent is a record below its partition's applied position that is
// neither processed nor quarantined.
type SkippedEvent struct {
	Partition int32  `json:"partition"`
	Offset    int64  `json:"offset"`
	EventID   string `json:"event_id"`
}

// OrphanEvent is a processed event with no record in the topic.
type OrphanEvent struct {
	EventID   string `json:"event_id"`
	Aggregate string `json:"aggregate"`
}

// Diverged reports whether the projection and its topic disagree: another
// incarnation, a projection ahead of its topic, skipped events or orphans.
// Lag alone is not divergence.
func (r *Report) Diverged() bool {
	if r.IdentityProblem != "" || r.Skipped > 0 || r.Orphans > 0 {
		return true
	}
	for _, p := range r.Partitions {
		if p.Ahead {
			return true
		}
	}
	return false
}

// Run audits the projection in pool (its search_path the projection's
// schema) against cfg.Topic. It needs one connection of pool for its
// temporary table, and holds one transaction open on it while it runs.
func Run(ctx context.Context, pool *pgxpool.Pool, cfg Config) (*Report, error) {
	began := time.Now()
	if cfg.ChunkRecords <= 0 {
		cfg.ChunkRecords = 20000
	}
	if cfg.Examples <= 0 {
		cfg.Examples = 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...)}, cfg.KafkaOpts...)...)
	if err != nil {
		return nil, fmt.Errorf("create Kafka client: %w", err)
	}
	defer cl.Close()
	rep := &Report{Topic: cfg.Topic, Outcomes: map[string]int64{}, Quarantine: map[string]int64{}}

	rec, recorded, err := topic.Recorded(ctx, pool, cfg.Topic)
	if err != nil {
		return nil, err
	}
	live, err := topic.Describe(ctx, cl, cfg.Topic)
	switch {
	case errors.Is(err, topic.ErrMissing):
		rep.Broker = "missing"
		rep.IdentityProblem = "the broker has no topic " + cfg.Topic
	case err != nil:
		return nil, err
	default:
		rep.Broker = live.String()
	}
	if recorded {
		rep.Identity = rec.String()
		if err == nil && rec.ID != live.ID {
			rep.IdentityProblem = fmt.Sprintf("the projection is built from %s, the broker's topic is %s: another incarnation (rebuild from this one with heed rebuild --swap)", rec, live)
		}
	} else {
		rep.Identity = "none recorded"
	}
	if rep.Broker == "missing" {
		return rep, nil
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `CREATE TEMPORARY TABLE IF NOT EXISTS heed_audit_records (partition int NOT NULL, "offset" bigint NOT NULL, event_id uuid, key_hash bigint NOT NULL, event_time timestamptz NOT NULL); TRUNCATE heed_audit_records`); err != nil {
		return nil, fmt.Errorf("create the audit's temporary table: %w", err)
	}
	defer conn.Exec(context.Background(), `DROP TABLE IF EXISTS heed_audit_records`) //nolint:errcheck // temporary anyway

	// The snapshot first, with the applied positions; the end offsets after
	// them (see the package comment).
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return nil, fmt.Errorf("begin the audit's snapshot: %w", err)
	}
	defer tx.Rollback(context.Background())                                                      //nolint:errcheck // it only read, and wrote its temporary table
	if _, err := tx.Exec(ctx, `SET LOCAL idle_in_transaction_session_timeout = 0`); err != nil { // idle while it reads the topic
		return nil, fmt.Errorf("begin the audit's snapshot: %w", err)
	}
	applied, err := applier.AppliedPositions(ctx, tx, cfg.Topic)
	if err != nil {
		return nil, err
	}
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("list end offsets: %w", err)
	}
	starts, err := adm.ListStartOffsets(ctx, cfg.Topic)
	if err != nil {
		return nil, fmt.Errorf("list start offsets: %w", err)
	}
	endOf, startOf := map[int32]int64{}, map[int32]int64{}
	ends.Each(func(o kadm.ListedOffset) { endOf[o.Partition] = o.Offset })
	starts.Each(func(o kadm.ListedOffset) { startOf[o.Partition] = o.Offset })
	var total int64
	for _, p := range slices.Sorted(maps.Keys(endOf)) {
		pr := PartitionReport{Partition: p, LogStart: startOf[p], End: endOf[p], Applied: applied[p]}
		pr.Lag = max(pr.End-pr.Applied, 0)
		pr.Ahead = pr.Applied > pr.End
		rep.Partitions = append(rep.Partitions, pr)
		total += pr.End - pr.LogStart
	}

	if err := read(ctx, cfg, startOf, endOf, total, tx, rep); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `CREATE INDEX ON heed_audit_records (event_id); ANALYZE heed_audit_records`); err != nil {
		return nil, fmt.Errorf("index the audit's temporary table: %w", err)
	}
	if err := compare(ctx, tx, cfg, startOf, rep); err != nil {
		return nil, err
	}
	rep.Took = time.Since(began)
	return rep, nil
}

// read consumes every partition from its start to its end and COPYs each
// record's identity into the temporary table, a chunk at a time.
func read(ctx context.Context, cfg Config, startOf, endOf map[int32]int64, total int64, tx pgx.Tx, rep *Report) error {
	want := map[string]map[int32]kgo.Offset{cfg.Topic: {}}
	left := 0
	for p, end := range endOf {
		if end > startOf[p] {
			want[cfg.Topic][p] = kgo.NewOffset().At(startOf[p])
			left++
		}
	}
	if left == 0 {
		return nil
	}
	// Without fetch sessions: the embedded broker (kfake), while records are
	// written, stopped answering a session's later fetches of a partition,
	// and the audit waited for its end for good. Every fetch naming every
	// partition costs a few bytes per partition.
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.ConsumePartitions(want),
		kgo.FetchMaxBytes(8 << 20), kgo.FetchMaxPartitionBytes(1 << 20), kgo.DisableFetchSessions()}, cfg.KafkaOpts...)...)
	if err != nil {
		return fmt.Errorf("create Kafka consumer: %w", err)
	}
	defer cl.Close()
	chunk := make([][]any, 0, cfg.ChunkRecords)
	flush := func() error {
		if len(chunk) == 0 {
			return nil
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"heed_audit_records"}, []string{"partition", "offset", "event_id", "key_hash", "event_time"}, pgx.CopyFromRows(chunk)); err != nil {
			return fmt.Errorf("copy the topic's records: %w", err)
		}
		chunk = chunk[:0]
		return nil
	}
	began, last := time.Now(), time.Now()
	var lastRead int64
	logs := lograte.New(20 * time.Second)
	done := map[int32]bool{}
	for len(done) < left {
		fetches := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return err
		}
		fetches.EachError(func(_ string, p int32, err error) { // the client retries
			logs.Log(cfg.Logger.Warn, "fetch failed; retrying", "partition", p, "err", err)
		})
		var stop error
		fetches.EachRecord(func(r *kgo.Record) {
			if stop != nil || r.Offset >= endOf[r.Partition] {
				return
			}
			if r.Offset == endOf[r.Partition]-1 {
				done[r.Partition] = true
			}
			if applier.IsControl(r) { // an operator's decision, carried out by the applier: no event
				rep.Decisions++
				return
			}
			var id any // NULL: no event ID can be read; the record must be quarantined
			var env envelopev1.Envelope
			if proto.Unmarshal(r.Value, &env) == nil {
				if u, err := uuid.Parse(env.GetEventId()); err == nil {
					id = u
				}
			}
			chunk = append(chunk, []any{r.Partition, r.Offset, id, dedup.KeyHash(string(r.Key)), r.Timestamp})
			rep.Records++
			if len(chunk) == cap(chunk) {
				stop = flush()
			}
		})
		if stop != nil {
			return stop
		}
		if cfg.Progress != nil && time.Since(last) >= time.Second {
			rate := float64(rep.Records-lastRead) / time.Since(last).Seconds()
			last, lastRead = time.Now(), rep.Records
			cfg.Progress(Progress{Read: rep.Records, Total: total, Rate: rate, Elapsed: time.Since(began)})
		}
	}
	if cfg.Progress != nil {
		cfg.Progress(Progress{Read: rep.Records, Total: total, Elapsed: time.Since(began)})
	}
	return flush()
}

// compare runs the anti-joins and counts, in the snapshot of the positions.
func compare(ctx context.Context, tx pgx.Tx, cfg Config, startOf map[int32]int64, rep *Report) error {
	if err := tx.QueryRow(ctx, `SELECT count(*) - count(DISTINCT (event_id, key_hash)) FILTER (WHERE event_id IS NOT NULL) - count(*) FILTER (WHERE event_id IS NULL) FROM heed_audit_records`).Scan(&rep.Duplicates); err != nil {
		return fmt.Errorf("count duplicates: %w", err)
	}
	// Skipped: below the applied position, neither quarantined (by offset)
	// nor processed (by event ID and key; a row recorded before rows had
	// keys, key_hash 0, matches any key), nor pruned by retention (written
	// before its cutoff; the cutoff is -infinity before any pruning).
	const missing = `FROM heed_audit_records r
JOIN applied_positions ap ON ap.topic = $1 AND ap.partition = r.partition AND r."offset" < ap.next_offset
WHERE NOT EXISTS (SELECT FROM quarantine q WHERE q.topic = $1 AND q.partition = r.partition AND q."offset" = r."offset")
  AND (r.event_id IS NULL OR NOT EXISTS (SELECT FROM processed_events p WHERE p.event_id = r.event_id AND p.key_hash IN (r.key_hash, 0)))`
	const skipped = missing + ` AND (r.event_id IS NULL OR r.event_time >= $2)`
	if err := tx.QueryRow(ctx, `SELECT max(cutoff) FROM heed_retention`).Scan(&rep.RetentionCutoff); err != nil {
		return fmt.Errorf("read the retention cutoff: %w", err)
	}
	var cutoff time.Time // before every event when nothing was pruned
	if rep.RetentionCutoff != nil {
		cutoff = *rep.RetentionCutoff
	}
	if err := tx.QueryRow(ctx, `SELECT count(*) FILTER (WHERE r.event_id IS NULL OR r.event_time >= $2), count(*) FILTER (WHERE r.event_id IS NOT NULL AND r.event_time < $2) `+missing,
		cfg.Topic, cutoff).Scan(&rep.Skipped, &rep.Pruned); err != nil {
		return fmt.Errorf("find skipped events: %w", err)
	}
	if rep.Skipped > 0 {
		rows, err := tx.Query(ctx, `SELECT r.partition, r."offset", coalesce(r.event_id::text, 'none readable') `+skipped+` ORDER BY 1, 2 LIMIT $3`, cfg.Topic, cutoff, cfg.Examples)
		if err != nil {
			return fmt.Errorf("list skipped events: %w", err)
		}
		if rep.SkippedExamples, err = pgx.CollectRows(rows, pgx.RowToStructByPos[SkippedEvent]); err != nil {
			return fmt.Errorf("list skipped events: %w", err)
		}
	}
	const orphans = `FROM processed_events p WHERE NOT EXISTS (SELECT FROM heed_audit_records r WHERE r.event_id = p.event_id AND (p.key_hash = 0 OR p.key_hash = r.key_hash))`
	if err := tx.QueryRow(ctx, `SELECT count(*) `+orphans).Scan(&rep.Orphans); err != nil {
		return fmt.Errorf("find processed events without an event: %w", err)
	}
	trimmed := false
	for _, s := range startOf {
		trimmed = trimmed || s > 0
	}
	if trimmed {
		// The topic's start was deleted (retention): its events' rows are
		// expected to have none.
		rep.OrphansBeforeStart, rep.Orphans = rep.Orphans, 0
	}
	if rep.Orphans > 0 {
		rows, err := tx.Query(ctx, `SELECT p.event_id::text, p.aggregate `+orphans+` ORDER BY 1 LIMIT $1`, cfg.Examples)
		if err != nil {
			return fmt.Errorf("list processed events without an event: %w", err)
		}
		if rep.OrphanExamples, err = pgx.CollectRows(rows, pgx.RowToStructByPos[OrphanEvent]); err != nil {
			return fmt.Errorf("list processed events without an event: %w", err)
		}
	}
	rows, err := tx.Query(ctx, `SELECT status, count(*) FROM processed_events GROUP BY 1`)
	if err != nil {
		return fmt.Errorf("count outcomes: %w", err)
	}
	var (
		status int16
		n      int64
	)
	if _, err := pgx.ForEachRow(rows, []any{&status, &n}, func() error {
		rep.Outcomes[dedup.Outcome(status).String()] = n
		return nil
	}); err != nil {
		return fmt.Errorf("count outcomes: %w", err)
	}
	rows, err = tx.Query(ctx, `SELECT kind || ' ' || state, count(*) FROM quarantine WHERE topic = $1 GROUP BY 1`, cfg.Topic)
	if err != nil {
		return fmt.Errorf("count the quarantine: %w", err)
	}
	var kind string
	if _, err := pgx.ForEachRow(rows, []any{&kind, &n}, func() error {
		rep.Quarantine[kind] = n
		return nil
	}); err != nil {
		return fmt.Errorf("count the quarantine: %w", err)
	}
	return nil
}
