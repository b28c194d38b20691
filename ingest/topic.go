package ingest

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
)

// EnsureTopic creates topic with the given partition count and replication
// factor (-1: the broker's default) if it does not exist, with infinite
// retention: the topic is the source of truth. An existing topic is left as it
// is; a partition count that differs is logged by the caller, not changed
// (partitions cannot shrink, and growing them moves keys).
// It returns the topic's partition count.
func EnsureTopic(ctx context.Context, cl *kgo.Client, topic string, partitions int32, replication int16) (int32, error) {
	adm := kadm.NewClient(cl)
	retention := "-1"
	resp, err := adm.CreateTopic(ctx, partitions, replication, map[string]*string{
		"retention.ms":    &retention,
		"retention.bytes": &retention,
	}, topic)
	if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
		return 0, fmt.Errorf("create topic %s: %w (check --brokers)", topic, err)
	}
	if resp.Err != nil && !errors.Is(resp.Err, kerr.TopicAlreadyExists) {
		return 0, fmt.Errorf("create topic %s: %w", topic, resp.Err)
	}
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("describe topic %s: %w", topic, err)
	}
	d, ok := details[topic]
	if !ok || d.Err != nil {
		return 0, fmt.Errorf("describe topic %s: %v", topic, d.Err)
	}
	return int32(len(d.Partitions)), nil
}

var _ consistency.EndOffsets = (*Publisher)(nil)

// EndOffsets returns every partition of the publisher's topic with its end
// offset (consistency.ListEndOffsets). It is safe for concurrent use.
func (p *Publisher) EndOffsets(ctx context.Context) (map[int32]int64, error) {
	return consistency.ListEndOffsets(ctx, p.cl, p.cfg.Topic)
}
