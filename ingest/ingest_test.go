package ingest_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

func TestConfigValidate(t *testing.T) {
	cases := map[string]struct {
		cfg  ingest.Config
		want []string
	}{
		"empty":               {ingest.Config{}, []string{"--brokers", "--topic"}},
		"bad compression":     {ingest.Config{Brokers: []string{"b"}, Topic: "t", Compression: "brotli"}, []string{`"brotli"`, "zstd"}},
		"complete":            {ingest.Config{Brokers: []string{"b"}, Topic: "t", Compression: "lz4"}, nil},
		"default compression": {ingest.Config{Brokers: []string{"b"}, Topic: "t"}, nil},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			err := c.cfg.Validate()
			if c.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted an incomplete config")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
		})
	}
}

// Publish writes one keyed envelope with headers and answers with the event
// ID and a token naming where it landed; EnsureTopic is idempotent.
func TestPublish(t *testing.T) {
	b := testenv.Broker(t, 3)
	const topic = "events"
	pub, err := ingest.NewPublisher(ingest.Config{Brokers: b.Addrs(), Topic: topic, ProduceTimeout: 5 * time.Second, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	for range 2 {
		n, err := ingest.EnsureTopic(t.Context(), pub.Client(), topic, 3, -1)
		if err != nil || n != 3 {
			t.Fatalf("EnsureTopic = %d, %v; want 3 partitions", n, err)
		}
	}

	id, tok, err := pub.Publish(t.Context(), "acct", "req-1", &ledgerv1.FundsDeposited{AccountId: "acct", Amount: 7})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if id != envelope.EventID("req-1").String() {
		t.Errorf("event ID %s, want %s", id, envelope.EventID("req-1"))
	}
	at, err := consistency.Parse(tok)
	if err != nil {
		t.Fatalf("token: %v", err)
	}

	cl, err := kgo.NewClient(kgo.SeedBrokers(b.Addrs()...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: {at.Partition: kgo.NewOffset().At(at.Offset)}}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var rec *kgo.Record
	for rec == nil {
		fs := cl.PollFetches(t.Context())
		if err := t.Context().Err(); err != nil {
			t.Fatal(err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset == at.Offset {
				rec = r
			}
		})
	}
	if string(rec.Key) != "acct" {
		t.Errorf("key %q, want acct", rec.Key)
	}
	headers := map[string]string{}
	for _, h := range rec.Headers {
		headers[h.Key] = string(h.Value)
	}
	if headers[ingest.HeaderEventID] != id || headers[ingest.HeaderEventType] != "heed.ledger.v1.FundsDeposited" {
		t.Errorf("headers %v", headers)
	}
	var env envelopev1.Envelope
	if err := proto.Unmarshal(rec.Value, &env); err != nil {
		t.Fatalf("envelope: %v", err)
	}
	var dep ledgerv1.FundsDeposited
	if err := env.GetPayload().UnmarshalTo(&dep); err != nil {
		t.Fatalf("payload: %v", err)
	}
	if env.GetEventId() != id || env.GetRequestId() != "req-1" || env.GetAggregateId() != "acct" || dep.GetAmount() != 7 || env.GetOccurredAt() == nil {
		t.Errorf("envelope %v with payload %v", &env, &dep)
	}
}

// produceRequests counts the produce requests a client sent.
type produceRequests struct{ n atomic.Int64 }

func (p *produceRequests) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == 0 && err == nil { // 0: Produce
		p.n.Add(1)
	}
}

// Concurrent commands share produce requests while the producer lingers, and
// each is answered with its own place on the topic.
func TestPublishConcurrentShareRequests(t *testing.T) {
	b := testenv.Broker(t, 1)
	var reqs produceRequests
	pub, err := ingest.NewPublisher(ingest.Config{
		Brokers: b.Addrs(), Topic: "events", Logger: testenv.Logger(t),
		Linger:    300 * time.Millisecond, // far longer than starting the callers takes
		KafkaOpts: []kgo.Opt{kgo.WithHooks(&reqs)},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if _, err := ingest.EnsureTopic(t.Context(), pub.Client(), "events", 1, -1); err != nil {
		t.Fatal(err)
	}

	// One command first, so that the producer knows the topic and sends as
	// soon as it may.
	if _, _, err := pub.Publish(t.Context(), "acct", "req-first", &ledgerv1.FundsDeposited{AccountId: "acct", Amount: 1}); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	reqs.n.Store(0)

	const callers = 20
	tokens := make(chan string, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Go(func() {
			_, tok, err := pub.Publish(t.Context(), "acct", fmt.Sprintf("req-%d", i), &ledgerv1.FundsDeposited{AccountId: "acct", Amount: 1})
			if err != nil {
				t.Errorf("Publish %d: %v", i, err)
			}
			tokens <- tok
		})
	}
	wg.Wait()
	close(tokens)
	offsets := map[int64]bool{}
	for tok := range tokens {
		at, err := consistency.Parse(tok)
		if err != nil {
			t.Fatalf("token %q: %v", tok, err)
		}
		offsets[at.Offset] = true
	}
	if len(offsets) != callers {
		t.Errorf("%d distinct offsets for %d commands", len(offsets), callers)
	}
	// All of them arrive within the linger: one request (two if a caller
	// was late).
	if n := reqs.n.Load(); n < 1 || n > 2 {
		t.Errorf("%d produce requests for %d concurrent commands, want them to share one", n, callers)
	}
}
