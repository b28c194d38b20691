package ingest_test

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/heed-dev/heed/ingest"
)

// TestTopicDurability: a topic EnsureTopic creates has no durability
// problem, on one broker and on three (replication 3, min.insync.replicas
// 2); a topic with compaction, finite retention or one replica on three
// brokers has each named.
func TestTopicDurability(t *testing.T) {
	for _, brokers := range []int{1, 3} {
		c, err := kfake.NewCluster(kfake.NumBrokers(brokers))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...))
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		if _, err := ingest.EnsureTopic(t.Context(), cl, "events", 4, -1); err != nil {
			t.Fatal(err)
		}
		d, err := ingest.DescribeDurability(t.Context(), cl, "events")
		if err != nil {
			t.Fatal(err)
		}
		if p := d.Problems(); len(p) != 0 {
			t.Errorf("%d brokers: a topic EnsureTopic created has problems: %v (%+v)", brokers, p, d)
		}
		if brokers == 3 && (d.Replication != 3 || d.MinInsync != 2) {
			t.Errorf("3 brokers: replication %d, min.insync.replicas %d; want 3 and 2", d.Replication, d.MinInsync)
		}
		// Each setting is the topic's own (DescribeConfigs: a dynamic topic
		// config), not a default the cluster could change under it.
		cfgs, err := kadm.NewClient(cl).DescribeTopicConfigs(t.Context(), "events")
		if err != nil {
			t.Fatal(err)
		}
		rc, err := cfgs.On("events", nil)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"unclean.leader.election.enable": "false", "cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
		for _, c := range rc.Configs {
			if v, ok := want[c.Key]; ok {
				if c.MaybeValue() != v || c.Source != kmsg.ConfigSourceDynamicTopicConfig {
					t.Errorf("%d brokers: %s=%s (source %v), want %s set on the topic", brokers, c.Key, c.MaybeValue(), c.Source, v)
				}
				delete(want, c.Key)
			}
		}
		if len(want) != 0 {
			t.Errorf("%d brokers: the topic's configs lack %v", brokers, want)
		}
		if brokers != 3 {
			continue
		}
		compact, short := "compact", "1000"
		if _, err := kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, map[string]*string{"cleanup.policy": &compact, "retention.ms": &short}, "careless"); err != nil {
			t.Fatal(err)
		}
		d, err = ingest.DescribeDurability(t.Context(), cl, "careless")
		if err != nil {
			t.Fatal(err)
		}
		all := strings.Join(d.Problems(), "\n")
		for _, want := range []string{"replication factor 1 on a cluster of 3 brokers", "cleanup.policy=compact", "retention.ms=1000"} {
			if !strings.Contains(all, want) {
				t.Errorf("problems of a careless topic lack %q:\n%s", want, all)
			}
		}
	}
}
