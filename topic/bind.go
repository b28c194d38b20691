package topic

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
)

// Querier is what Bind and Recorded need: a pool, a connection or a
// transaction whose search_path is the projection's schema.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Recorded returns the identity recorded for the topic name, and false when
// none is recorded yet.
func Recorded(ctx context.Context, q Querier, name string) (Identity, bool, error) {
	var (
		id  [16]byte
		rec = Identity{Name: name}
	)
	err := q.QueryRow(ctx, `SELECT topic_id, partitions FROM topic_identity WHERE topic = $1`, name).Scan(&id, &rec.Partitions)
	if errors.Is(err, pgx.ErrNoRows) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, fmt.Errorf("read the projection's topic identity: %w", err)
	}
	rec.ID = uuid.UUID(id)
	return rec, true, nil
}

// Verify reads the topic name from the broker through cl and binds the
// projection in q to it (see Bind), returning the identity recorded. When the
// topic does not exist it returns an error wrapping ErrMissing if the
// projection has no identity recorded yet (the topic may be created), and one
// wrapping ErrOtherIncarnation if it has (the broker lost the topic).
func Verify(ctx context.Context, q Querier, cl *kgo.Client, name string) (Identity, error) {
	// Read what is recorded before asking the broker: a topic recorded
	// before it is found missing was lost, whereas one created and recorded
	// by another process meanwhile is found by Describe.
	rec, recorded, err := Recorded(ctx, q, name)
	if err != nil {
		return Identity{}, err
	}
	live, err := Describe(ctx, cl, name)
	if errors.Is(err, ErrMissing) {
		if recorded {
			return Identity{}, fmt.Errorf("%w: it was built from %s, which the broker does not have: the broker lost it (a wiped or restored broker, "+
				"a deleted topic, another cluster). Restore the broker's data or point --brokers at the original cluster; or build a new projection "+
				"in a fresh --schema", ErrOtherIncarnation, rec)
		}
		return Identity{}, err
	}
	if err != nil {
		return Identity{}, err
	}
	return Bind(ctx, q, live, func(ctx context.Context) (map[int32]int64, error) {
		return consistency.ListEndOffsets(ctx, cl, name)
	})
}

// EndsFunc reads where the topic's partitions end, from the broker, when
// called (consistency.ListEndOffsets).
type EndsFunc func(ctx context.Context) (map[int32]int64, error)

// Bind ties the projection to live, the topic as the broker has it now, and
// returns the identity recorded for it. On first use it records live. It
// reads the applied positions first and the topic's end offsets (through
// ends) after them: a partition's end only grows, and a record is applied
// only once it is below it, so a position read first can never lie beyond an
// end read after it, however fast records are written and applied meanwhile,
// unless the broker lost records. It fails, wrapping
//   - ErrOtherIncarnation when live has another topic ID than the recorded one;
//   - ErrAheadOfTopic when a partition's applied position lies beyond its end
//     (checked before the first record too: a projection built from another
//     topic, before identities were recorded);
//   - ErrPartitionsChanged when live has another partition count: the
//     recorded identity is returned with it, for callers that hold back the
//     partitions it does not cover.
//
// Each error says what to do.
func Bind(ctx context.Context, q Querier, live Identity, ends EndsFunc) (Identity, error) {
	rec, ok, err := Recorded(ctx, q, live.Name)
	if err != nil {
		return Identity{}, err
	}
	if ok && rec.ID != live.ID {
		return Identity{}, fmt.Errorf("%w: it was built from %s, but the broker's topic %s has topic ID %s (a wiped or restored broker, a recreated topic, another cluster); "+
			"commands written to it would never be applied here. Restore the broker's data or point --brokers at the original cluster; "+
			"or build a new projection from this topic in a fresh --schema (heed migrate, then heed apply replays it)",
			ErrOtherIncarnation, rec, live.Name, live.ID)
	}
	if err := checkAhead(ctx, q, live.Name, ends); err != nil {
		return Identity{}, err
	}
	if !ok {
		if _, err := q.Exec(ctx, `INSERT INTO topic_identity (topic, topic_id, partitions) VALUES ($1, $2, $3) ON CONFLICT (topic) DO NOTHING`,
			live.Name, [16]byte(live.ID), live.Partitions); err != nil {
			return Identity{}, fmt.Errorf("record the projection's topic identity: %w", err)
		}
		return Bind(ctx, q, live, ends) // compare with what won a race to record it
	}
	if rec.Partitions != live.Partitions {
		return rec, fmt.Errorf("%w: topic %s has %d partitions, the projection was built with %d: keys would hash to other partitions and "+
			"their events could apply out of order, so commands are refused and the new partitions are held. Let heed apply drain the first %d partitions, "+
			"then run heed topic confirm-partitions",
			ErrPartitionsChanged, live.Name, live.Partitions, rec.Partitions, rec.Partitions)
	}
	return rec, nil
}

// checkAhead fails with ErrAheadOfTopic when an applied position of the topic
// lies beyond the end of its partition. It reads the positions before the
// ends, in that order (see Bind): the other order reports every record
// applied between the two reads as lost.
func checkAhead(ctx context.Context, q Querier, name string, endsOf EndsFunc) error {
	rows, err := q.Query(ctx, `SELECT partition, next_offset FROM applied_positions WHERE topic = $1 AND next_offset > 0 ORDER BY partition`, name)
	if err != nil {
		return fmt.Errorf("read applied positions: %w", err)
	}
	type pos struct {
		P    int32
		Next int64
	}
	positions, err := pgx.CollectRows(rows, pgx.RowToStructByPos[pos])
	if err != nil {
		return fmt.Errorf("read applied positions: %w", err)
	}
	ends, err := endsOf(ctx)
	if err != nil {
		return err
	}
	for _, p := range positions {
		if end, ok := ends[p.P]; !ok || p.Next > end {
			return fmt.Errorf("%w: partition %d of %s is applied up to offset %d, but the topic ends at %d: the broker lost events this projection holds "+
				"(a wiped or restored broker, another topic of the same name), and new commands would get offsets already applied and be skipped. "+
				"Restore the broker's data, or build a new projection from this topic in a fresh --schema",
				ErrAheadOfTopic, p.P, name, p.Next, end)
		}
	}
	return nil
}
