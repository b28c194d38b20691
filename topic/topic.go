// Package topic ties a projection to the topic incarnation it is built from.
//
// A Kafka topic of a given name can be deleted and created again, or live on
// a broker whose data was wiped: its offsets then start over, and a projection
// built from the old incarnation would skip the new one's events as applied
// already, while commands are still acknowledged. Its partition count can grow,
// which moves keys to other partitions and breaks their order. So the schema
// records the topic's ID and partition count on first use (Bind), and serve,
// apply and dev refuse to run against another incarnation; a Guard re-checks
// while serve runs and stops admitting commands on a mismatch; a changed
// partition count is accepted only by ConfirmPartitions, once the old
// partitions are drained.
//
// Its tables are in Migrations; Bind also reads the applier's applied
// positions, so it runs after the applier's migrations.
package topic

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"

	"github.com/google/uuid"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrations holds the goose migrations of the topic_identity table.
var Migrations, _ = fs.Sub(migrations, "migrations")

// Identity is a topic incarnation: its name, its Kafka topic ID and its
// partition count.
type Identity struct {
	Name       string
	ID         uuid.UUID
	Partitions int32
}

func (i Identity) String() string {
	return fmt.Sprintf("%s (topic ID %s, %d partitions)", i.Name, i.ID, i.Partitions)
}

// Errors of Describe and Bind; the errors returned wrap them with what to do.
var (
	// ErrMissing: the broker has no topic of that name.
	ErrMissing = errors.New("the topic does not exist on the broker")
	// ErrOtherIncarnation: the broker's topic has another ID than the one
	// the projection was built from.
	ErrOtherIncarnation = errors.New("the projection belongs to another incarnation of the topic")
	// ErrPartitionsChanged: the topic's partition count differs from the one
	// the projection was built with.
	ErrPartitionsChanged = errors.New("the topic's partition count changed")
	// ErrAheadOfTopic: an applied position lies beyond the topic's end: the
	// broker lost events the projection holds, or the projection was built
	// from another topic.
	ErrAheadOfTopic = errors.New("the projection is ahead of the topic")
)

// Describe reads the identity of the topic name from the broker, asking it
// afresh (kadm would answer from the client's metadata cache, up to
// MetadataMinAge old). It returns an error wrapping ErrMissing when there is
// no such topic.
func Describe(ctx context.Context, cl *kgo.Client, name string) (Identity, error) {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(name)
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return Identity{}, fmt.Errorf("describe topic %s: %w (check --brokers)", name, err)
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != name {
			continue
		}
		switch err := kerr.ErrorForCode(t.ErrorCode); {
		case errors.Is(err, kerr.UnknownTopicOrPartition):
			return Identity{}, fmt.Errorf("topic %s: %w", name, ErrMissing)
		case err != nil:
			return Identity{}, fmt.Errorf("describe topic %s: %w", name, err)
		}
		return Identity{Name: name, ID: uuid.UUID(t.TopicID), Partitions: int32(len(t.Partitions))}, nil
	}
	return Identity{}, fmt.Errorf("topic %s: %w", name, ErrMissing)
}
