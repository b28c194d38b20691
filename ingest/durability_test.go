package ingest_test

import (
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

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
