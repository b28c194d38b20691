package ingest_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

// producedBatch is what the broker received of one record batch.
type producedBatch struct {
	acks                int16
	transactional       bool
	producerID          int64
	epoch               int16
	partition, firstSeq int32
	records             int32
}

// The Publisher's produce requests, as the broker receives them, ask for
// acks=all (-1: every in-sync replica) and carry an idempotent producer's ID,
// epoch and per-partition sequence numbers, continuous from 0: what "ack
// means durable" and a retried produce not written twice rest on (issue 26
// item 9). A publisher built with leader-only acks, or with idempotence
// disabled, fails here, though every other ingest test passes with it.
func TestProduceRequestsAcksAllIdempotent(t *testing.T) {
	b := testenv.Broker(t, 2)
	const topic = "events"
	var (
		mu      sync.Mutex
		batches []producedBatch
		bad     []string
	)
	b.Cluster().ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		pr, ok := req.(*kmsg.ProduceRequest)
		if !ok {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		for _, rt := range pr.Topics {
			for _, rp := range rt.Partitions {
				var rb kmsg.RecordBatch
				if err := rb.ReadFrom(rp.Records); err != nil {
					bad = append(bad, fmt.Sprintf("partition %d: unreadable record batch: %v", rp.Partition, err))
					continue
				}
				batches = append(batches, producedBatch{acks: pr.Acks, transactional: pr.TransactionID != nil,
					producerID: rb.ProducerID, epoch: rb.ProducerEpoch, partition: rp.Partition, firstSeq: rb.FirstSequence, records: rb.NumRecords})
			}
		}
		return nil, nil, false // kfake writes it as usual
	})

	pub, err := ingest.NewPublisher(ingest.Config{Brokers: b.Addrs(), Topic: topic, ProduceTimeout: 5 * time.Second, Logger: testenv.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if _, err := ingest.EnsureTopic(t.Context(), pub.Client(), topic, 2, -1); err != nil {
		t.Fatal(err)
	}
	const commands = 40
	var wg sync.WaitGroup
	for i := range commands {
		wg.Go(func() {
			acct := fmt.Sprintf("acct-%d", i%7)
			if _, _, err := pub.Publish(t.Context(), acct, fmt.Sprintf("req-%d", i), &ledgerv1.FundsDeposited{AccountId: acct, Amount: 1}); err != nil {
				t.Errorf("publish %d: %v", i, err)
			}
		})
	}
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	for _, s := range bad {
		t.Error(s)
	}
	if len(batches) == 0 {
		t.Fatal("the broker received no produce request")
	}
	next := map[int32]int32{} // partition: the next sequence number expected
	var total int32
	for _, pb := range batches {
		if pb.acks != -1 {
			t.Errorf("a produce request asked for acks=%d, want -1 (all in-sync replicas)", pb.acks)
		}
		if pb.producerID < 0 || pb.epoch < 0 {
			t.Errorf("a batch of partition %d has producer ID %d epoch %d: not an idempotent producer's", pb.partition, pb.producerID, pb.epoch)
		}
		if pb.producerID != batches[0].producerID {
			t.Errorf("batches of producer IDs %d and %d: one publisher should be one producer", batches[0].producerID, pb.producerID)
		}
		if pb.transactional {
			t.Errorf("a produce request is transactional: heed's producer is idempotent, not transactional")
		}
		if pb.firstSeq != next[pb.partition] {
			t.Errorf("a batch of partition %d starts at sequence %d, want %d (continuous from 0)", pb.partition, pb.firstSeq, next[pb.partition])
		}
		next[pb.partition] = pb.firstSeq + pb.records
		total += pb.records
	}
	if total != commands {
		t.Errorf("the broker received %d records, want %d", total, commands)
	}
}
