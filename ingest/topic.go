package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/consistency"
)

// EnsureTopic creates topic with the given partition count and replication
// factor if it does not exist, with the settings that keep what the broker
// acknowledged (see Durability): infinite retention and cleanup.policy=delete
// (the topic is the source of truth: never compacted), min.insync.replicas 2
// when there are replicas to spare, unclean.leader.election.enable=false. replication -1 picks 3, or the number of
// brokers when there are fewer. An existing topic is left as it is (see
// DescribeDurability for its problems); a partition count that differs is the
// caller's to report (partitions cannot shrink, and growing them moves keys).
// It returns the topic's partition count.
func EnsureTopic(ctx context.Context, cl *kgo.Client, topic string, partitions int32, replication int16) (int32, error) {
	adm := kadm.NewClient(cl)
	if replication <= 0 {
		brokers, err := adm.ListBrokers(ctx)
		if err != nil {
			return 0, fmt.Errorf("list brokers: %w (check --brokers)", err)
		}
		replication = int16(min(3, max(len(brokers), 1)))
	}
	retention, cleanup, unclean := "-1", "delete", "false"
	minInsync := strconv.Itoa(int(min(replication-1, 2)))
	if replication == 1 {
		minInsync = "1"
	}
	resp, err := adm.CreateTopic(ctx, partitions, replication, map[string]*string{
		"retention.ms":        &retention,
		"retention.bytes":     &retention,
		"cleanup.policy":      &cleanup,
		"min.insync.replicas": &minInsync,
		// Kafka's default too, set on the topic so that a cluster whose
		// default says otherwise does not decide for it.
		"unclean.leader.election.enable": &unclean,
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

// Durability is what decides whether an event the broker acknowledged stays:
// how many brokers hold the topic, how many must have it before the ack, and
// whether anything deletes events.
type Durability struct {
	Topic           string
	Brokers         int
	Replication     int
	MinInsync       int
	CleanupPolicy   string
	RetentionMs     string
	RetentionBytes  string
	UncleanElection string
}

// DescribeDurability reads topic's Durability from the cluster.
func DescribeDurability(ctx context.Context, cl *kgo.Client, topic string) (Durability, error) {
	adm := kadm.NewClient(cl)
	d := Durability{Topic: topic}
	brokers, err := adm.ListBrokers(ctx)
	if err != nil {
		return d, fmt.Errorf("list brokers: %w", err)
	}
	d.Brokers = len(brokers)
	details, err := adm.ListTopics(ctx, topic)
	if err != nil {
		return d, fmt.Errorf("describe topic %s: %w", topic, err)
	}
	td, ok := details[topic]
	if !ok || td.Err != nil {
		return d, fmt.Errorf("describe topic %s: %v", topic, td.Err)
	}
	for _, p := range td.Partitions {
		if d.Replication == 0 || len(p.Replicas) < d.Replication {
			d.Replication = len(p.Replicas)
		}
	}
	cfgs, err := adm.DescribeTopicConfigs(ctx, topic)
	if err != nil {
		return d, fmt.Errorf("describe the configs of topic %s: %w", topic, err)
	}
	rc, err := cfgs.On(topic, nil)
	if err != nil {
		return d, fmt.Errorf("describe the configs of topic %s: %w", topic, err)
	}
	for _, c := range rc.Configs {
		v := c.MaybeValue()
		switch c.Key {
		case "min.insync.replicas":
			d.MinInsync, _ = strconv.Atoi(v)
		case "cleanup.policy":
			d.CleanupPolicy = v
		case "retention.ms":
			d.RetentionMs = v
		case "retention.bytes":
			d.RetentionBytes = v
		case "unclean.leader.election.enable":
			d.UncleanElection = v
		}
	}
	return d, nil
}

// Problems lists what in d breaks "an ack means durable", each with the fix;
// none for a topic EnsureTopic created.
func (d Durability) Problems() []string {
	var out []string
	if d.Brokers >= 3 && d.Replication < 3 {
		out = append(out, fmt.Sprintf("replication factor %d on a cluster of %d brokers: losing a broker can lose acknowledged events; give the topic 3 replicas (kafka-reassign-partitions)", d.Replication, d.Brokers))
	}
	if d.Replication >= 2 && d.MinInsync < 2 {
		out = append(out, fmt.Sprintf("min.insync.replicas=%d with %d replicas: an ack may come from one replica, lost with its broker; set min.insync.replicas=2", d.MinInsync, d.Replication))
	}
	if d.MinInsync > d.Replication && d.Replication > 0 {
		out = append(out, fmt.Sprintf("min.insync.replicas=%d above the replication factor %d: every produce fails; lower it to %d", d.MinInsync, d.Replication, max(d.Replication-1, 1)))
	}
	if strings.Contains(d.CleanupPolicy, "compact") {
		out = append(out, fmt.Sprintf("cleanup.policy=%s: compaction deletes events (the topic is the event log and the source of truth); set cleanup.policy=delete", d.CleanupPolicy))
	}
	if d.RetentionMs != "" && d.RetentionMs != "-1" {
		out = append(out, fmt.Sprintf("retention.ms=%s: events older than that are deleted, and the projection can no longer be rebuilt from the topic; set retention.ms=-1", d.RetentionMs))
	}
	if d.RetentionBytes != "" && d.RetentionBytes != "-1" {
		out = append(out, fmt.Sprintf("retention.bytes=%s: the oldest events are deleted past that size; set retention.bytes=-1", d.RetentionBytes))
	}
	if d.UncleanElection == "true" {
		out = append(out, "unclean.leader.election.enable=true: a replica that missed acknowledged events may become leader; set it to false")
	}
	return out
}

var _ consistency.EndOffsets = (*Publisher)(nil)

// EndOffsets returns every partition of the publisher's topic with its end
// offset (consistency.ListEndOffsets). It is safe for concurrent use.
func (p *Publisher) EndOffsets(ctx context.Context) (map[int32]int64, error) {
	return consistency.ListEndOffsets(ctx, p.cl, p.cfg.Topic)
}
