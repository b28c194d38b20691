package bench

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
)

// TestRunSmall runs every in-process phase at a small size against real
// Postgres and the embedded broker: each must verify its result and report a
// figure, and the run must leave no schema behind.
func TestRunSmall(t *testing.T) {
	url := testenv.PostgresURL(t)
	var progress bytes.Buffer
	r, err := Run(t.Context(), Config{
		DatabaseURL: url,
		Events:      3000,
		Accounts:    100,
		NaiveEvents: 300,
		Clients:     8,
		Duration:    300 * time.Millisecond,
		Rate:        400,
		Only:        []string{"references", "drain", "naive", "ingest", "e2e"},
		Progress:    &progress,
		Logger:      testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	for name, v := range map[string]float64{
		"peer_batched_events_per_s":        r.PeerBatched,
		"floor_events_per_s":               r.Floor,
		"applier_events_per_s":             r.Applier,
		"ordered_ids_applier_events_per_s": r.OrderedApplier,
		"ordered_ids_floor_events_per_s":   r.OrderedFloor,
		"applier_to_peer_batched_ratio":    r.ApplierToPeerBatched,
		"applier_to_floor_ratio":           r.ApplierToFloor,
		"naive_events_per_s":               r.Naive,
		"ingest_rps":                       r.IngestRPS,
		"noop_rps":                         r.NoopRPS,
		"ingest_p99_ms":                    r.IngestP99,
		"e2e_p99_ms":                       r.E2EP99,
		"ingest_to_noop_ratio":             r.IngestToNoop,
		"ingest_cpu_us_per_command":        r.IngestCPUPerCommand,
		"noop_cpu_us_per_command":          r.NoopCPUPerCommand,
		"applier_cpu_us_per_event":         r.ApplierCPUPerEvent,
	} {
		if v <= 0 {
			t.Errorf("%s = %v, want > 0", name, v)
		}
	}
	// The references are measured before and after the drain; the ratios are to the means.
	for name, ref := range map[string]struct {
		mean float64
		runs []float64
	}{"peer_batched": {r.PeerBatched, r.PeerBatchedRuns}, "floor": {r.Floor, r.FloorRuns}} {
		if runs := ref.runs; len(runs) != 2 || runs[0] <= 0 || runs[1] <= 0 || ref.mean != (runs[0]+runs[1])/2 {
			t.Errorf("%s %v from runs %v, want two positive runs and their mean", name, ref.mean, runs)
		}
	}
	// So are the consumer references, which read a topic of the drain's records.
	c := r.ConsumerReferences
	for name, ref := range map[string]struct {
		mean, fromFirst, cpu float64
		runs                 []float64
	}{"consumer_batched": {c.ConsumerBatched, c.ConsumerBatchedFromFirst, c.ConsumerBatchedCPU, c.ConsumerBatchedRuns},
		"consumer_floor": {c.ConsumerFloor, c.ConsumerFloorFromFirst, c.ConsumerFloorCPU, c.ConsumerFloorRuns}} {
		if runs := ref.runs; len(runs) != 2 || runs[0] <= 0 || runs[1] <= 0 || ref.mean != (runs[0]+runs[1])/2 || ref.fromFirst <= 0 || ref.cpu <= 0 {
			t.Errorf("%s %v from runs %v (%v from the first transaction, %v µs CPU per record), want two positive runs and their mean, positive figures",
				name, ref.mean, runs, ref.fromFirst, ref.cpu)
		}
	}
	if c.ConsumerRecords != 3130 {
		t.Errorf("consumer references read %d records, want the drain's 3130", c.ConsumerRecords)
	}
	if c.ApplierToConsumerBatched != r.Applier/c.ConsumerBatched || c.ApplierToConsumerFloor != r.Applier/c.ConsumerFloor ||
		c.ApplyRateToConsumerBatched != r.ApplyRate/c.ConsumerBatchedFromFirst || c.ApplyRateToConsumerFloor != r.ApplyRate/c.ConsumerFloorFromFirst {
		t.Errorf("ratios %+v are not the drain's %v (%v from its first batch) to the consumer references'", c, r.Applier, r.ApplyRate)
	}
	if r.ApplierToFloor != r.Applier/r.Floor || r.ApplierToPeerBatched != r.Applier/r.PeerBatched {
		t.Errorf("ratios %v and %v are not the drain's %v to the references' %v and %v", r.ApplierToFloor, r.ApplierToPeerBatched, r.Applier, r.Floor, r.PeerBatched)
	}
	// Each caller has one command in flight at a time.
	if n := r.IngestRecordsPerProduce; n < 1 || n > 8 {
		t.Errorf("ingest: %.2f records per produce request, want between 1 and the 8 callers", n)
	}
	// 100 opens, 3,000 deposits, every hundredth deposit again.
	if r.ApplierRecords != 3130 || r.ApplierDups != 30 {
		t.Errorf("drain: %d records, %d duplicates skipped; want 3130 and 30", r.ApplierRecords, r.ApplierDups)
	}
	if r.NaiveEvents != 333 {
		t.Errorf("naive: %d records, want 333 (30 opens, 300 deposits, 3 duplicates)", r.NaiveEvents)
	}
	if r.E2ECommands == 0 || r.E2EP50 > r.E2EP99 || r.E2EP99 > r.E2EMax {
		t.Errorf("e2e: %d commands, p50 %v p99 %v max %v", r.E2ECommands, r.E2EP50, r.E2EP99, r.E2EMax)
	}
	var table bytes.Buffer
	if err := WriteTable(&table, r, Config{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"reference: hand-written batch", "reference: floor", "reference: Postgres alone", "reads the drain's 3,130 records", "before the drain", "applier drain", "UUIDv7 request IDs", "one event per transaction", "ingest: no-op handler", "end to end"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	pool, err := pgxpool.New(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var left int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'heed_bench_%'`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d benchmark schemas left behind", left)
	}
}

// TestCheckLedgerCatchesWrongResults: the check every phase ends with fails
// on a lost event, an event applied twice and a missing processed row.
// TestIngestProtocols runs the ingest phase with clients speaking Connect over
// HTTP/2 and gRPC: each must be served, and every acknowledged command must be
// on the topic once (the phase checks it).
func TestIngestProtocols(t *testing.T) {
	url := testenv.PostgresURL(t)
	for _, protocol := range []string{"connect-h2", "grpc"} {
		t.Run(protocol, func(t *testing.T) {
			var progress bytes.Buffer
			r, err := Run(t.Context(), Config{
				DatabaseURL: url,
				Clients:     8,
				Duration:    200 * time.Millisecond,
				Protocol:    protocol,
				Only:        []string{"ingest"},
				Progress:    &progress,
				Logger:      testenv.Logger(t),
			})
			if err != nil {
				t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
			}
			if r.Protocol != protocol || r.IngestRPS <= 0 || r.NoopRPS <= 0 || r.IngestToNoop <= 0 {
				t.Errorf("protocol %q, ingest %v req/s, no-op %v req/s, ratio %v; want %q and positive figures", r.Protocol, r.IngestRPS, r.NoopRPS, r.IngestToNoop, protocol)
			}
		})
	}
}

// TestConsumerWritesSkipDuplicates: the consumer references' writes apply a
// record once, whether its duplicate is in the same batch or a later one.
func TestConsumerWritesSkipDuplicates(t *testing.T) {
	ctx := t.Context()
	e := &env{cfg: Config{DatabaseURL: testenv.PostgresURL(t)}, run: randomSuffix()}
	e.cfg.setDefaults()
	admin, err := pgxpool.New(ctx, e.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	e.admin = admin
	data, err := newDataset(2, 6, randomIDs)
	if err != nil {
		t.Fatal(err)
	}
	// Decoded from their records, as the consumers see them.
	evs := make([]event, len(data.events))
	for i := range data.events {
		if evs[i], err = decodeRecord(&data.events[i].rec); err != nil {
			t.Fatal(err)
		}
		if evs[i].id != data.events[i].id || evs[i].account != data.events[i].account || evs[i].amount != data.events[i].amount {
			t.Fatalf("record %d decoded to %+v, want %+v", i, evs[i], data.events[i])
		}
	}
	// Opens and two deposits, one of them twice; then its third copy, the
	// other deposit again and the rest.
	batches := [][]event{append(slices.Clone(evs[:4]), evs[3]), append([]event{evs[3], evs[2]}, evs[4:]...)}
	for _, ref := range []reference{consumerBatched, consumerFloor} {
		t.Run(ref.phase, func(t *testing.T) {
			pool, _, drop, err := e.freshSchema(ctx, "dups_"+ref.phase, 2)
			if err != nil {
				t.Fatal(err)
			}
			defer drop()
			if _, err := pool.Exec(ctx, `CREATE TABLE ref_processed (event_id uuid PRIMARY KEY)`); err != nil {
				t.Fatal(err)
			}
			for _, b := range batches {
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return ref.write(ctx, tx, b) }); err != nil {
					t.Fatal(err)
				}
			}
			if err := checkLedgerIn(ctx, pool, "ref_processed", 2, 6, 8); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestCheckLedgerCatchesWrongResults(t *testing.T) {
	ctx := t.Context()
	e := &env{cfg: Config{DatabaseURL: testenv.PostgresURL(t)}, run: randomSuffix()}
	e.cfg.setDefaults()
	admin, err := pgxpool.New(ctx, e.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	e.admin = admin
	pool, _, drop, err := e.freshSchema(ctx, "check", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	data, err := newDataset(2, 4, randomIDs)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]dedup.Row, len(data.events))
	for i, ev := range data.events {
		rows[i] = dedup.Row{Item: dedup.Item{ID: ev.id, Key: ev.account, Fingerprint: ev.fingerprint}, Outcome: dedup.Applied}
	}
	if err := dedup.Record(ctx, tx, rows); err != nil {
		t.Fatal(err)
	}
	if err := upsertAccounts(ctx, tx, data.events); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := checkLedger(ctx, pool, 2, 4, 6); err != nil {
		t.Fatalf("correct ledger: %v", err)
	}
	for _, c := range []struct {
		name string
		sql  string
	}{
		{"deposit applied twice", `UPDATE accounts SET balance = balance + 1 WHERE account_id = 'acct-0'`},
		{"deposit lost", `UPDATE accounts SET balance = balance - 2 WHERE account_id = 'acct-0'`},
		{"processed row missing", `DELETE FROM processed_events WHERE event_id = (SELECT event_id FROM processed_events LIMIT 1)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background()) //nolint:errcheck
			if _, err := tx.Exec(ctx, c.sql); err != nil {
				t.Fatal(err)
			}
			err = checkLedger(ctx, tx, 2, 4, 6)
			if err == nil || !strings.Contains(err.Error(), "WRONG RESULT") {
				t.Fatalf("check after %s = %v, want a WRONG RESULT error", c.name, err)
			}
		})
	}
}

// TestTrackerLatencies: an ack counts as readable once its partition's
// applied position passes its offset, measured from the ack.
func TestTrackerLatencies(t *testing.T) {
	tr := newTracker()
	t0 := time.Now()
	tr.add(consistency.Token{Partition: 0, Offset: 5}, t0)
	tr.add(consistency.Token{Partition: 0, Offset: 6}, t0)
	tr.add(consistency.Token{Partition: 1, Offset: 0}, t0.Add(time.Millisecond))
	if left := tr.observe(map[int32]int64{0: 6}, t0.Add(3*time.Millisecond)); left != 2 {
		t.Fatalf("pending after the first observation = %d, want 2", left)
	}
	if left := tr.observe(map[int32]int64{0: 7, 1: 1}, t0.Add(10*time.Millisecond)); left != 0 {
		t.Fatalf("pending after the second observation = %d, want 0", left)
	}
	got := tr.latencies()
	want := latencies{3 * time.Millisecond, 9 * time.Millisecond, 10 * time.Millisecond}
	if len(got) != len(want) {
		t.Fatalf("latencies = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("latencies = %v, want %v", got, want)
		}
	}
	if q := got.quantile(0.5); q != 9*time.Millisecond {
		t.Errorf("p50 = %v, want 9ms", q)
	}
	if q := got.quantile(1); q != 10*time.Millisecond {
		t.Errorf("max = %v, want 10ms", q)
	}
}

// TestTrackerReportsPollFailure: when reading the positions fails, waiting
// for pending acks reports that failure, not a lost-write timeout.
func TestTrackerReportsPollFailure(t *testing.T) {
	tr := newTracker()
	tr.add(consistency.Token{Partition: 0, Offset: 1}, time.Now())
	tr.fail(context.DeadlineExceeded)
	err := tr.waitAll(t.Context(), time.Minute)
	if err != context.DeadlineExceeded {
		t.Fatalf("waitAll = %v, want the poll failure", err)
	}
}

// TestTransfersSmall runs the drain and the transfers phases at a small size:
// every transfer must settle (the phase checks each account's balance, their
// sum and that nothing was refused, refunded or quarantined) and the figures
// must agree with each other: two records per transfer, one credit relayed
// per transfer at least, the ratio to the drain.
func TestTransfersSmall(t *testing.T) {
	url := testenv.PostgresURL(t)
	var progress bytes.Buffer
	r, err := Run(t.Context(), Config{
		DatabaseURL: url,
		Events:      2000,
		Accounts:    50,
		Transfers:   1000,
		Only:        []string{"drain", "transfers"},
		Progress:    &progress,
		Logger:      testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}
	if r.Transfers != 1000 || r.TransferAccounts != 50 {
		t.Errorf("%d transfers between %d accounts, want 1000 between 50", r.Transfers, r.TransferAccounts)
	}
	if r.TransfersPerS <= 0 || r.TransferEventsPerS != 2*r.TransfersPerS {
		t.Errorf("%v transfers/s, %v events/s: want a positive rate and two records (debit, credit) per transfer", r.TransfersPerS, r.TransferEventsPerS)
	}
	if r.TransferRelayed < 1000 {
		t.Errorf("the relay produced %d credits, want one per transfer at least", r.TransferRelayed)
	}
	// 50 accounts over 8 partitions: most pairs straddle two.
	if s := r.TransferCrossPartition; s <= 0 || s > 1 {
		t.Errorf("cross-partition share %v, want in (0, 1]", s)
	}
	if r.Applier <= 0 || r.TransferEventsToDrain != r.TransferEventsPerS/r.Applier {
		t.Errorf("ratio %v, want the transfers' %v events/s to the drain's %v", r.TransferEventsToDrain, r.TransferEventsPerS, r.Applier)
	}
	var table bytes.Buffer
	if err := WriteTable(&table, r, Config{}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(table.String(), "transfers, settled end to end") || !strings.Contains(table.String(), "× the drain's events/s") {
		t.Errorf("table lacks the transfers' row:\n%s", table.String())
	}
}

// TestCheckTransfersCatchesWrongResults: the check the transfers phase ends
// with passes after real transfers settled, and fails on a lost credit, a
// credit to the wrong account, a rejected step and a refund.
func TestCheckTransfersCatchesWrongResults(t *testing.T) {
	ctx := t.Context()
	e := &env{cfg: Config{DatabaseURL: testenv.PostgresURL(t), Logger: testenv.Logger(t)}, run: randomSuffix()}
	e.cfg.setDefaults()
	broker, err := devstack.StartBroker(ctx, devstack.BrokerConfig{Listen: "127.0.0.1:0", Partitions: e.cfg.Partitions, Logger: e.cfg.Logger})
	if err != nil {
		t.Fatal(err)
	}
	defer broker.Close()
	e.broker = broker
	admin, err := pgxpool.New(ctx, e.cfg.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	e.admin = admin
	plan, err := newTransferPlan(4, 40)
	if err != nil {
		t.Fatal(err)
	}
	pool, _, drop, err := e.freshSchema(ctx, "check_transfers", 8)
	if err != nil {
		t.Fatal(err)
	}
	defer drop()
	name, cl, del, err := e.topic(ctx, "check_transfers")
	if err != nil {
		t.Fatal(err)
	}
	defer del()
	if err := e.produce(ctx, cl, plan.setup); err != nil {
		t.Fatal(err)
	}
	if _, err := e.runTransfers(ctx, pool, cl, name, "check_setup", len(plan.setup), 0); err != nil {
		t.Fatal(err)
	}
	if err := e.produce(ctx, cl, plan.transfers); err != nil {
		t.Fatal(err)
	}
	if _, err := e.runTransfers(ctx, pool, cl, name, "check_transfers", 80, 40); err != nil {
		t.Fatal(err)
	}
	if err := checkTransfers(ctx, pool, plan); err != nil {
		t.Fatalf("settled transfers: %v", err)
	}
	for _, c := range []struct {
		name string
		sql  string
	}{
		{"credit lost", `UPDATE accounts SET balance = balance - 1 WHERE account_id = 'acct-1'`},
		{"credit to the wrong account", `UPDATE accounts SET balance = balance + (CASE account_id WHEN 'acct-1' THEN 1 ELSE -1 END) WHERE account_id IN ('acct-1', 'acct-2')`},
		{"step rejected", `UPDATE processed_events SET status = 3 WHERE event_id = (SELECT event_id FROM outbox LIMIT 1)`},
		{"refund emitted", `UPDATE outbox SET name = 'refund' WHERE event_id = (SELECT event_id FROM outbox LIMIT 1)`},
	} {
		t.Run(c.name, func(t *testing.T) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(context.Background()) //nolint:errcheck
			if tag, err := tx.Exec(ctx, c.sql); err != nil || tag.RowsAffected() == 0 {
				t.Fatalf("%s: %v, %d rows", c.sql, err, tag.RowsAffected())
			}
			err = checkTransfers(ctx, tx, plan)
			if err == nil || !strings.Contains(err.Error(), "WRONG RESULT") {
				t.Fatalf("check after %s = %v, want a WRONG RESULT error", c.name, err)
			}
		})
	}
}
