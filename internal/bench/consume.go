package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// The consumer references are the references (see reference) as pipelines
// that do the drain's whole job, with no heed code: a franz-go consumer group
// member reads a topic produced like the drain's (the same records: opens,
// deposits, 1% duplicates at the end), decodes each record's envelope and its
// Any payload, writes each partition's records in log order in transactions of
// up to refBatch records, as many at once as the applier runs, and marks the
// records for commit once their transaction has committed (franz-go commits
// the marks every second and once more at the end). The duplicates on the
// topic make them skip what they already applied, as a real consumer must:
//
//   - consumer_batched: the hand-written batch: the batch's event IDs inserted
//     ON CONFLICT DO NOTHING RETURNING the new ones, then the summed upsert of
//     the new ones' amounts;
//   - consumer_floor: the least a correct consumer writes: the IDs already
//     processed read back, COPY of the others, then their summed upsert.
var (
	consumerBatched = reference{"consumer_batched", writeConsumerBatched}
	consumerFloor   = reference{"consumer_floor", writeConsumerFloor}
)

// ConsumerReferences are the figures of the consumer references; Result
// embeds them. Each rate is the mean of the runs (one before the drain, one
// after it when the drain runs too), from the consumer's start (joining the
// group, the first fetch) to its last record in Postgres, as the drain's
// Applier is; *FromFirst count from its first committed transaction, as the
// drain's ApplyRate does.
type ConsumerReferences struct {
	ConsumerBatched          float64   `json:"consumer_batched_events_per_s"`
	ConsumerBatchedRuns      []float64 `json:"consumer_batched_runs_events_per_s"`
	ConsumerBatchedFromFirst float64   `json:"consumer_batched_from_first_batch_events_per_s"`
	ConsumerFloor            float64   `json:"consumer_floor_events_per_s"`
	ConsumerFloorRuns        []float64 `json:"consumer_floor_runs_events_per_s"`
	ConsumerFloorFromFirst   float64   `json:"consumer_floor_from_first_batch_events_per_s"`
	// ConsumerRecords is the number of records each run read (duplicates
	// included).
	ConsumerRecords int `json:"consumer_records"`
	// What Postgres spent per record in each reference's first run, and this
	// process's CPU time per record (the consumer and the broker serving its
	// fetches, as for the drain's ApplierCPUPerEvent).
	ConsumerBatchedPostgres perEvent `json:"consumer_batched_postgres_per_event"`
	ConsumerFloorPostgres   perEvent `json:"consumer_floor_postgres_per_event"`
	ConsumerBatchedCPU      float64  `json:"consumer_batched_cpu_us_per_record"`
	ConsumerFloorCPU        float64  `json:"consumer_floor_cpu_us_per_record"`
	// The drain's rates to the consumer references': Applier to the rates
	// from the start, ApplyRate to those from the first transaction.
	ApplierToConsumerBatched   float64 `json:"applier_to_consumer_batched_ratio"`
	ApplierToConsumerFloor     float64 `json:"applier_to_consumer_floor_ratio"`
	ApplyRateToConsumerBatched float64 `json:"apply_rate_to_consumer_batched_ratio"`
	ApplyRateToConsumerFloor   float64 `json:"apply_rate_to_consumer_floor_ratio"`
}

// consumerReferences runs both consumer references on data and adds a run to
// each one's figures; after is true for the runs after the drain.
func (e *env) consumerReferences(ctx context.Context, data *dataset, r *Result, after bool) error {
	c := &r.ConsumerReferences
	for _, ref := range []struct {
		reference
		runs      *[]float64
		mean      *float64
		fromFirst *float64
		pg        *perEvent
		cpu       *float64
	}{
		{consumerBatched, &c.ConsumerBatchedRuns, &c.ConsumerBatched, &c.ConsumerBatchedFromFirst, &c.ConsumerBatchedPostgres, &c.ConsumerBatchedCPU},
		{consumerFloor, &c.ConsumerFloorRuns, &c.ConsumerFloor, &c.ConsumerFloorFromFirst, &c.ConsumerFloorPostgres, &c.ConsumerFloorCPU},
	} {
		phase := ref.phase
		if after {
			phase += "_after"
		}
		e.settle(ctx)
		res, err := e.consumerRun(ctx, phase, data, ref.write)
		if err != nil {
			return err
		}
		n := float64(len(*ref.runs))
		*ref.runs = append(*ref.runs, res.rate)
		*ref.mean = mean(*ref.runs)
		*ref.fromFirst = (*ref.fromFirst*n + res.fromFirst) / (n + 1)
		if !after {
			*ref.pg, *ref.cpu, c.ConsumerRecords = res.postgres, res.cpu, res.records
		}
		e.progress("%s: %d records at %.0f events/s (%.0f from its first transaction); Postgres used %.1f µs of CPU and wrote %.0f bytes of WAL per record; this process %.1f µs of CPU per record",
			phase, res.records, res.rate, res.fromFirst, res.postgres.CPU, res.postgres.WAL, res.cpu)
	}
	return nil
}

// consumerRatios sets the drain's ratios to the consumer references.
func (c *ConsumerReferences) consumerRatios(r *Result) {
	if r.Applier <= 0 || r.ApplyRate <= 0 {
		return
	}
	if c.ConsumerBatched > 0 && c.ConsumerBatchedFromFirst > 0 {
		c.ApplierToConsumerBatched = r.Applier / c.ConsumerBatched
		c.ApplyRateToConsumerBatched = r.ApplyRate / c.ConsumerBatchedFromFirst
	}
	if c.ConsumerFloor > 0 && c.ConsumerFloorFromFirst > 0 {
		c.ApplierToConsumerFloor = r.Applier / c.ConsumerFloor
		c.ApplyRateToConsumerFloor = r.ApplyRate / c.ConsumerFloorFromFirst
	}
}

type consumerResult struct {
	rate, fromFirst float64
	records         int
	postgres        perEvent
	cpu             float64 // µs of this process's CPU per record
}

// consumerRun produces data's records (as the drain does) to a topic of the
// phase's own, consumes them with a group member that writes each batch with
// write, and checks the result: every balance, every event processed once, and
// the group's committed offsets at the end of every partition.
func (e *env) consumerRun(ctx context.Context, phase string, data *dataset, write func(context.Context, pgx.Tx, []event) error) (consumerResult, error) {
	conc := e.cfg.Applier.Concurrency
	pool, _, drop, err := e.freshSchema(ctx, phase, int32(conc))
	if err != nil {
		return consumerResult{}, err
	}
	defer drop()
	if _, err := pool.Exec(ctx, `CREATE TABLE ref_processed (event_id uuid PRIMARY KEY)`); err != nil {
		return consumerResult{}, fmt.Errorf("%s: %w", phase, err)
	}
	topic, pcl, del, err := e.topic(ctx, phase)
	if err != nil {
		return consumerResult{}, err
	}
	defer del()
	want, err := func() (int64, error) { // the records are the broker's once produced
		recs, _ := data.records()
		e.progress("%s: producing %d records to %s", phase, len(recs), topic)
		return int64(len(recs)), e.produce(ctx, pcl, recs)
	}()
	if err != nil {
		return consumerResult{}, err
	}

	group := e.name(phase)
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(e.broker.Addrs()...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500*time.Millisecond),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(time.Second),
	)
	if err != nil {
		return consumerResult{}, err
	}
	defer cl.Close()

	var (
		done      atomic.Int64 // records whose transaction committed
		firstOnce sync.Once
		first     time.Time
		firstN    int64
		finished  = make(chan struct{})
	)
	committed := func(n int) {
		total := done.Add(int64(n))
		firstOnce.Do(func() { first, firstN = time.Now(), total })
		if total == want {
			close(finished)
		}
	}
	slots := make(chan struct{}, conc)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(runCtx)
	// The poll loop hands each partition's records to a worker of the
	// partition's own, which writes them in order while the loop fetches on.
	workers := map[int32]chan []*kgo.Record{}
	cpu0, _ := processUsage()
	pg0 := e.pgUsage(ctx)
	start := time.Now()
	g.Go(func() error {
		defer func() {
			for _, ch := range workers {
				close(ch)
			}
		}()
		for {
			fetches := cl.PollFetches(gctx)
			if gctx.Err() != nil {
				return nil
			}
			if err := fetches.Err(); err != nil {
				return fmt.Errorf("%s: poll: %w", phase, err)
			}
			var sendErr error
			fetches.EachPartition(func(p kgo.FetchTopicPartition) {
				if sendErr != nil || len(p.Records) == 0 {
					return
				}
				ch, ok := workers[p.Partition]
				if !ok {
					ch = make(chan []*kgo.Record, 64)
					workers[p.Partition] = ch
					g.Go(func() error { return consumePartition(gctx, cl, pool, slots, ch, write, committed) })
				}
				select {
				case ch <- p.Records:
				case <-gctx.Done():
					sendErr = gctx.Err()
				}
			})
			if sendErr != nil {
				return nil
			}
		}
	})
	select {
	case <-finished:
	case <-gctx.Done():
	}
	elapsed := time.Since(start)
	cpu1, _ := processUsage()
	pg := e.pgUsage(ctx).since(pg0, int(want))
	cancel()
	if err := g.Wait(); err != nil && !errors.Is(err, context.Canceled) {
		return consumerResult{}, err
	}
	if n := done.Load(); n != want {
		return consumerResult{}, fmt.Errorf("%s: stopped after %d of %d records: %w", phase, n, want, ctx.Err())
	}
	if err := cl.CommitMarkedOffsets(ctx); err != nil {
		return consumerResult{}, fmt.Errorf("%s: commit offsets: %w", phase, err)
	}
	if err := checkCommitted(ctx, cl, topic, group); err != nil {
		return consumerResult{}, fmt.Errorf("%s: %w", phase, err)
	}
	if err := checkLedgerIn(ctx, pool, "ref_processed", data.accounts, data.deposits(), int64(len(data.events))); err != nil {
		return consumerResult{}, fmt.Errorf("%s: %w", phase, err)
	}
	res := consumerResult{rate: float64(want) / elapsed.Seconds(), records: int(want), postgres: pg,
		cpu: float64((cpu1 - cpu0).Nanoseconds()) / 1e3 / float64(want)}
	if d := start.Add(elapsed).Sub(first); d > 0 && want > firstN {
		res.fromFirst = float64(want-firstN) / d.Seconds()
	} else {
		res.fromFirst = res.rate
	}
	return res, nil
}

// consumePartition writes one partition's records as they arrive on ch: up to
// refBatch of them per transaction, the records decoded first, and marks them
// for commit once the transaction has committed.
func consumePartition(ctx context.Context, cl *kgo.Client, pool interface {
	BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
}, slots chan struct{}, ch <-chan []*kgo.Record, write func(context.Context, pgx.Tx, []event) error, committed func(int)) error {
	var pending []*kgo.Record
	batch := make([]event, 0, refBatch)
	for {
		if len(pending) == 0 {
			recs, ok := <-ch
			if !ok {
				return nil
			}
			pending = recs
		}
		// Take what else has arrived, up to a full batch, without waiting.
	more:
		for len(pending) < refBatch {
			select {
			case recs, ok := <-ch:
				if !ok {
					break more
				}
				pending = append(pending, recs...)
			default:
				break more
			}
		}
		n := min(len(pending), refBatch)
		batch = batch[:0]
		for _, rec := range pending[:n] {
			ev, err := decodeRecord(rec)
			if err != nil {
				return fmt.Errorf("partition %d offset %d: %w", rec.Partition, rec.Offset, err)
			}
			batch = append(batch, ev)
		}
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		err := pgx.BeginTxFunc(ctx, pool, pgx.TxOptions{}, func(tx pgx.Tx) error { return write(ctx, tx, batch) })
		<-slots
		if err != nil {
			return fmt.Errorf("partition %d: %w", pending[0].Partition, err)
		}
		cl.MarkCommitRecords(pending[n-1])
		committed(n)
		pending = pending[n:]
	}
}

// decodeRecord decodes a record as a consumer of the ledger's topic must: the
// envelope, its event ID, and its Any payload by type.
func decodeRecord(rec *kgo.Record) (event, error) {
	var env envelopev1.Envelope
	if err := proto.Unmarshal(rec.Value, &env); err != nil {
		return event{}, fmt.Errorf("decode envelope: %w", err)
	}
	id, err := uuid.Parse(env.GetEventId())
	if err != nil {
		return event{}, fmt.Errorf("event ID %q: %w", env.GetEventId(), err)
	}
	ev := event{id: id}
	switch env.GetType() {
	case "heed.ledger.v1.AccountOpened":
		var m ledgerv1.AccountOpened
		if err := env.GetPayload().UnmarshalTo(&m); err != nil {
			return event{}, fmt.Errorf("decode %s: %w", env.GetType(), err)
		}
		ev.account = m.GetAccountId()
	case "heed.ledger.v1.FundsDeposited":
		var m ledgerv1.FundsDeposited
		if err := env.GetPayload().UnmarshalTo(&m); err != nil {
			return event{}, fmt.Errorf("decode %s: %w", env.GetType(), err)
		}
		ev.account, ev.amount = m.GetAccountId(), m.GetAmount()
	default:
		return event{}, fmt.Errorf("unknown event type %q", env.GetType())
	}
	return ev, nil
}

// firstOccurrences returns b's events with IDs not seen earlier in b, and
// their IDs: a batch may hold a record and its duplicate.
func firstOccurrences(b []event) ([]event, [][16]byte) {
	seen := make(map[uuid.UUID]struct{}, len(b))
	evs, ids := make([]event, 0, len(b)), make([][16]byte, 0, len(b))
	for _, ev := range b {
		if _, dup := seen[ev.id]; dup {
			continue
		}
		seen[ev.id] = struct{}{}
		evs, ids = append(evs, ev), append(ids, ev.id)
	}
	return evs, ids
}

// only returns the events of evs whose IDs are (keep) or are not (!keep) in ids.
func only(evs []event, ids map[uuid.UUID]struct{}, keep bool) []event {
	out := evs[:0:0]
	for _, ev := range evs {
		if _, in := ids[ev.id]; in == keep {
			out = append(out, ev)
		}
	}
	return out
}

func collectIDs(rows pgx.Rows) (map[uuid.UUID]struct{}, error) {
	ids := map[uuid.UUID]struct{}{}
	var id [16]byte
	_, err := pgx.ForEachRow(rows, []any{&id}, func() error {
		ids[id] = struct{}{}
		return nil
	})
	return ids, err
}

func writeConsumerBatched(ctx context.Context, tx pgx.Tx, b []event) error {
	evs, ids := firstOccurrences(b)
	rows, _ := tx.Query(ctx, `INSERT INTO ref_processed (event_id) SELECT * FROM unnest($1::uuid[]) ON CONFLICT DO NOTHING RETURNING event_id`, ids)
	inserted, err := collectIDs(rows)
	if err != nil {
		return fmt.Errorf("insert processed ids: %w", err)
	}
	return upsertAccounts(ctx, tx, only(evs, inserted, true))
}

func writeConsumerFloor(ctx context.Context, tx pgx.Tx, b []event) error {
	evs, ids := firstOccurrences(b)
	rows, _ := tx.Query(ctx, `SELECT event_id FROM ref_processed WHERE event_id = ANY($1::uuid[])`, ids)
	processed, err := collectIDs(rows)
	if err != nil {
		return fmt.Errorf("read processed ids: %w", err)
	}
	if len(processed) > 0 {
		evs = only(evs, processed, false)
	}
	return writeFloor(ctx, tx, evs)
}

// checkCommitted verifies that group has committed the end offset of every
// partition of topic.
func checkCommitted(ctx context.Context, cl *kgo.Client, topic, group string) error {
	adm := kadm.NewClient(cl)
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return fmt.Errorf("list end offsets: %w", err)
	}
	offsets, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		return fmt.Errorf("fetch committed offsets: %w", err)
	}
	var errs []error
	ends.Each(func(o kadm.ListedOffset) {
		c, ok := offsets.Lookup(topic, o.Partition)
		if !ok || c.At != o.Offset {
			errs = append(errs, fmt.Errorf("WRONG RESULT: partition %d: committed offset %d (found: %v), want the end offset %d", o.Partition, c.At, ok, o.Offset))
		}
	})
	return errors.Join(errs...)
}
