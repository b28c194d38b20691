package applier

import (
	"log/slog"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// A worker whose partition was released (revoked, lost, or replaced by an
// assignment that runs beside the poll loop) must never pause the
// partition's fetch: nothing of it would resume it, and the partition's
// next worker would wait for records its client no longer fetches. The
// poll loop may still be feeding it a full queue.
func TestReleasedWorkerNeverPauses(t *testing.T) {
	cl, err := kgo.NewClient(kgo.SeedBrokers("127.0.0.1:1"), kgo.ConsumeTopics("t"))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	a := &Applier{cfg: Config{Topic: "t", MaxBatchRecords: 1, MaxBatchBytes: 1 << 20}, cl: cl, log: slog.New(slog.DiscardHandler)}
	newWorker := func() *partition {
		return &partition{a: a, p: 3, quit: make(chan struct{}), done: make(chan struct{}),
			wake: make(chan struct{}, 1), room: make(chan struct{}, 1)}
	}
	recs := func(from int64) []*kgo.Record {
		var out []*kgo.Record
		for o := from; o < from+queuedBatches+1; o++ {
			out = append(out, &kgo.Record{Topic: "t", Partition: 3, Offset: o, Value: []byte("x")})
		}
		return out
	}
	past := time.Now().Add(-time.Second)

	// A live worker with a full queue pauses its partition, and its release
	// resumes it.
	w := newWorker()
	w.feed(recs(0), past)
	if got := cl.PauseFetchPartitions(nil)["t"]; len(got) != 1 || got[0] != 3 {
		t.Fatalf("paused %v after feeding a full queue, want partition 3", got)
	}
	w.release()
	if got := cl.PauseFetchPartitions(nil); len(got) != 0 {
		t.Fatalf("paused %v after release, want none", got)
	}

	// A released worker fed a full queue (the poll loop got it before an
	// assignment replaced it) leaves the partition's fetch alone.
	w = newWorker()
	w.release()
	w.feed(recs(0), past)
	if got := cl.PauseFetchPartitions(nil); len(got) != 0 {
		t.Errorf("a released worker paused %v, want none", got)
	}
}
