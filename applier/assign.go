package applier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/heed-dev/heed/internal/failpoint"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kgo"
)

// assigned runs when partitions are added to this member, before fetching
// starts: it reads each partition's applied position from the database (the
// truth about progress), starts the partition's worker there and tells the
// client to fetch from that offset.
func (a *Applier) assigned(ctx context.Context, offsets map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	parts := offsets[a.cfg.Topic]
	if len(parts) == 0 {
		return offsets, nil
	}
	ids := slices.Sorted(maps.Keys(parts))
	var positions map[int32]int64
	err := backoff.Retry(func() error {
		var err error
		positions, err = loadPositions(ctx, a.pool, a.cfg.Topic, ids)
		if errors.Is(err, ErrRetired) {
			return backoff.Permanent(err)
		}
		if err != nil && ctx.Err() != nil {
			return backoff.Permanent(err) // stopping: nothing to retry, nothing to warn about
		}
		if err != nil {
			a.logs.Log(a.log.Warn, "read applied positions failed; retrying", "err", err)
		}
		return err
	}, backoff.WithContext(newBackoff(), ctx))
	if errors.Is(err, ErrRetired) {
		a.fail(err) // Run stops; no worker starts
		return offsets, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read applied positions: %w", err)
	}
	// Run bound the topic before it started consuming; a rebalance later
	// checks again (the topic may have been recreated meanwhile).
	if a.covered.Load() == 0 || time.Since(time.Unix(0, a.coveredAt.Load())) >= recheckInterval {
		if err := a.bindTopic(ctx); err != nil {
			a.fail(err) // Run stops; no worker starts
			return offsets, nil
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range ids {
		pos := positions[p]
		if old := a.parts[p]; old != nil { // re-assigned without a revocation in between (a KIP-848 session restarted)
			a.stopAll([]*partition{old})
		}
		a.parts[p] = startPartition(a, p, pos)
		parts[p] = kgo.NewOffset().At(pos).WithEpoch(-1)
	}
	// A new worker starts with its partition's fetch not paused, whatever
	// an earlier worker of it left behind.
	a.cl.ResumeFetchPartitions(map[string][]int32{a.cfg.Topic: ids})
	a.log.Info("partitions assigned", "topic", a.cfg.Topic, "positions", positions)
	if failpoint.Fire("apply/drop-assigned") {
		delete(offsets, a.cfg.Topic) // owned, and never fetched
	}
	return offsets, nil
}

// revoked stops the workers of revoked partitions, letting in-flight batches
// commit or roll back, then commits what they marked.
func (a *Applier) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	if len(revoked[a.cfg.Topic]) > 0 { // KIP-848 groups call this at every change, often revoking nothing
		failpoint.Hit("apply/revoke")
	}
	a.release(revoked[a.cfg.Topic], "revoked")
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		a.log.Warn("commit offsets on revoke failed; the next owner resumes from the database position", "err", err)
	}
}

// lost stops the workers of partitions this member no longer owns.
func (a *Applier) lost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	a.release(lost[a.cfg.Topic], "lost")
}

func (a *Applier) release(ps []int32, why string) {
	if len(ps) == 0 {
		return
	}
	a.mu.Lock()
	var ws []*partition
	for _, p := range ps {
		if w := a.parts[p]; w != nil {
			ws = append(ws, w)
			delete(a.parts, p)
		}
	}
	a.mu.Unlock()
	a.stopAll(ws)
	a.log.Info("partitions "+why, "topic", a.cfg.Topic, "partitions", ps)
}

// ErrRetired means the schema's projection was retired by a rebuild's swap
// (heed rebuild --swap): another schema took its name and is the live one.
var ErrRetired = errors.New("this projection was retired by heed rebuild --swap; the live one took its schema name: point --schema at it (the retired one is kept until heed rebuild --drop-old)")

// loadPositions makes sure every partition has an applied_positions row and
// returns each partition's next offset to apply. It returns ErrRetired when
// the projection was retired.
func loadPositions(ctx context.Context, pool *pgxpool.Pool, topic string, ps []int32) (map[int32]int64, error) {
	if _, err := pool.Exec(ctx, `INSERT INTO applied_positions (topic, partition, next_offset)
SELECT $1, p, 0 FROM unnest($2::int[]) AS p
ON CONFLICT (topic, partition) DO NOTHING`, topic, ps); err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT partition, next_offset, retired_at IS NOT NULL FROM applied_positions WHERE topic = $1 AND partition = ANY($2::int[])`, topic, ps)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[int32]int64, len(ps))
	for rows.Next() {
		var (
			p       int32
			pos     int64
			retired bool
		)
		if err := rows.Scan(&p, &pos, &retired); err != nil {
			return nil, err
		}
		if retired {
			return nil, ErrRetired
		}
		out[p] = pos
	}
	return out, rows.Err()
}

// loadPosition reads one partition's next offset to apply, or ErrRetired.
func loadPosition(ctx context.Context, pool *pgxpool.Pool, topic string, p int32) (int64, error) {
	var (
		pos     int64
		retired bool
	)
	err := pool.QueryRow(ctx, `SELECT next_offset, retired_at IS NOT NULL FROM applied_positions WHERE topic = $1 AND partition = $2`, topic, p).Scan(&pos, &retired)
	if err == nil && retired {
		return 0, ErrRetired
	}
	return pos, err
}

// newBackoff is the retry schedule for transient failures: exponential from
// 100ms to 5s, forever.
func newBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	return b
}

// Rows is what AppliedPositions reads with: a pool, a connection or a
// transaction.
type Rows interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// AppliedPositions reads the applied position of every partition of topic
// the projection has one for: the next offset to apply.
func AppliedPositions(ctx context.Context, q Rows, topic string) (map[int32]int64, error) {
	rows, err := q.Query(ctx, `SELECT partition, next_offset FROM applied_positions WHERE topic = $1`, topic)
	if err != nil {
		return nil, fmt.Errorf("read applied positions: %w", err)
	}
	defer rows.Close()
	out := map[int32]int64{}
	for rows.Next() {
		var (
			p   int32
			pos int64
		)
		if err := rows.Scan(&p, &pos); err != nil {
			return nil, fmt.Errorf("read applied positions: %w", err)
		}
		out[p] = pos
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read applied positions: %w", err)
	}
	return out, nil
}
