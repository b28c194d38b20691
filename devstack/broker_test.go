package devstack_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
)

func startBroker(t *testing.T, dataDir string) *devstack.Broker {
	t.Helper()
	b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{
		Listen: "127.0.0.1:0", DataDir: dataDir, Partitions: 3, Logger: testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

func newClient(t *testing.T, b *devstack.Broker, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(b.Addrs()...), kgo.AllowAutoTopicCreation()}, opts...)...)
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// produce writes n records "v00".."v<n-1>" to topic and waits for acks.
func produce(ctx context.Context, t *testing.T, cl *kgo.Client, topic string, n int) {
	t.Helper()
	var recs []*kgo.Record
	for i := range n {
		recs = append(recs, &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "k%d", i%7), Value: fmt.Appendf(nil, "v%02d", i)})
	}
	if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce to %s: %v", topic, err)
	}
}

// consumeAll reads topic from the start until it has n values.
func consumeAll(ctx context.Context, t *testing.T, b *devstack.Broker, topic string, n int) []string {
	t.Helper()
	cl := newClient(t, b, kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var got []string
	for len(got) < n {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("consume %s: got %d of %d records before timeout: %v", topic, len(got), n, got)
		}
		fs.EachError(func(topic string, p int32, err error) { t.Fatalf("consume %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	slices.Sort(got)
	return got
}

func want(n int) []string {
	var w []string
	for i := range n {
		w = append(w, fmt.Sprintf("v%02d", i))
	}
	return w
}

func TestBrokerPersistsAcrossRestart(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()

	b1 := startBroker(t, dir)
	cl := newClient(t, b1)
	adm := kadm.NewClient(cl)
	retention := "3600000"
	if _, err := adm.CreateTopic(ctx, 4, 1, map[string]*string{"retention.ms": &retention}, "orders"); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	produce(ctx, t, cl, "orders", 30)
	produce(ctx, t, cl, "auto", 5) // auto-created with BrokerConfig.Partitions
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: "orders", Partition: 0, At: 2, LeaderEpoch: -1})
	offs.Add(kadm.Offset{Topic: "orders", Partition: 3, At: 1, LeaderEpoch: -1})
	if err := adm.CommitAllOffsets(ctx, "g1", offs); err != nil {
		t.Fatalf("commit offsets: %v", err)
	}
	cl.Close()
	b1.Close()
	b1.Close() // idempotent

	b2 := startBroker(t, dir)
	if b2.Addrs()[0] == "" {
		t.Fatal("no address")
	}
	adm2 := kadm.NewClient(newClient(t, b2))
	topics, err := adm2.ListTopics(ctx, "orders", "auto")
	if err != nil {
		t.Fatalf("list topics after restart: %v", err)
	}
	if got := len(topics["orders"].Partitions); got != 4 {
		t.Errorf("orders has %d partitions after restart, want 4", got)
	}
	if got := len(topics["auto"].Partitions); got != 3 {
		t.Errorf("auto-created topic has %d partitions, want 3 (BrokerConfig.Partitions)", got)
	}
	cfgs, err := adm2.DescribeTopicConfigs(ctx, "orders")
	if err != nil {
		t.Fatalf("describe configs: %v", err)
	}
	rc, err := cfgs.On("orders", nil)
	if err != nil {
		t.Fatalf("configs of orders: %v", err)
	}
	var gotRetention string
	for _, c := range rc.Configs {
		if c.Key == "retention.ms" {
			gotRetention = c.MaybeValue()
		}
	}
	if gotRetention != retention {
		t.Errorf("retention.ms after restart = %q, want %q", gotRetention, retention)
	}
	fetched, err := adm2.FetchOffsets(ctx, "g1")
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	for _, p := range []struct {
		part int32
		at   int64
	}{{0, 2}, {3, 1}} {
		if o, ok := fetched.Lookup("orders", p.part); !ok || o.At != p.at {
			t.Errorf("committed offset orders/%d after restart = %+v (found %v), want %d", p.part, o, ok, p.at)
		}
	}
	if got := consumeAll(ctx, t, b2, "orders", 30); !slices.Equal(got, want(30)) {
		t.Errorf("records after restart = %v, want %v", got, want(30))
	}
}

// TestBrokerRecoversWithoutClose simulates kill -9: it copies the data dir
// of a running broker (what a crash leaves on disk, as long as the OS
// survives) and starts a second broker on the copy.
func TestBrokerRecoversWithoutClose(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	b1 := startBroker(t, dir)
	cl := newClient(t, b1)
	produce(ctx, t, cl, "orders", 20)
	var offs kadm.Offsets
	offs.Add(kadm.Offset{Topic: "orders", Partition: 1, At: 3, LeaderEpoch: -1})
	if err := kadm.NewClient(cl).CommitAllOffsets(ctx, "g1", offs); err != nil {
		t.Fatalf("commit offsets: %v", err)
	}

	crashed := filepath.Join(t.TempDir(), "crashed")
	copyDir(t, dir, crashed)
	b2 := startBroker(t, crashed)
	if got := consumeAll(ctx, t, b2, "orders", 20); !slices.Equal(got, want(20)) {
		t.Errorf("records after crash = %v, want %v", got, want(20))
	}
	fetched, err := kadm.NewClient(newClient(t, b2)).FetchOffsets(ctx, "g1")
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	if o, ok := fetched.Lookup("orders", 1); !ok || o.At != 3 {
		t.Errorf("committed offset after crash = %+v (found %v), want 3", o, ok)
	}
}

// TestBrokerPortInUse checks that a taken Listen address is a *ListenError
// that says so in the library's terms (BrokerConfig.Listen), naming no CLI
// flag: which flag sets the address depends on the verb.
func TestBrokerPortInUse(t *testing.T) {
	b1 := startBroker(t, "")
	_, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: b1.Addrs()[0]})
	if err == nil {
		t.Fatal("second broker on the same address started")
	}
	var le *devstack.ListenError
	if !errors.As(err, &le) || !le.InUse() || le.Addr != b1.Addrs()[0] {
		t.Errorf("error %v (%T) is not a ListenError in use for %s", err, err, b1.Addrs()[0])
	}
	for _, s := range []string{"address already in use", "BrokerConfig.Listen", b1.Addrs()[0]} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	if strings.Contains(err.Error(), "--") {
		t.Errorf("error %q names a command-line flag; the caller maps BrokerConfig.Listen to its own", err)
	}
}

func TestBrokerWildcardAdvertisesLoopback(t *testing.T) {
	b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: "0.0.0.0:0"})
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	defer b.Close()
	if a := b.Addrs()[0]; !strings.HasPrefix(a, "127.0.0.1:") {
		t.Fatalf("Addrs = %v, want 127.0.0.1:port", b.Addrs())
	}
	produce(t.Context(), t, newClient(t, b), "t", 3)
}

func copyDir(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatalf("copy %s to %s: %v", src, dst, err)
	}
}
