package bench

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/ledger"
)

// drain produces data (with 1% duplicates) straight to a topic and times the
// applier, with the configured batch limits, from its start until it has
// processed every record.
func (e *env) drain(ctx context.Context, data *dataset, r *Result) error {
	res, err := e.drainRun(ctx, "drain", data, e.cfg.Applier)
	if err != nil {
		return err
	}
	r.Applier, r.ApplierRecords, r.ApplierDups = res.rate, res.records, res.dups
	r.ApplyRate, r.ApplierStartup, r.ApplierPostgres = res.applyRate, res.startup.Seconds()*1000, res.postgres
	r.ApplierCPUPerEvent = float64(res.cpu.Nanoseconds()) / 1e3 / float64(res.records)
	r.ApplierFaultsPerEvent = float64(res.faults) / float64(res.records)
	e.progress("drain: the first batch committed %s after the applier started; from there on %.0f events/s; Postgres used %.1f µs of CPU and wrote %.0f bytes of WAL per record",
		res.startup.Round(time.Millisecond), res.applyRate, res.postgres.CPU, res.postgres.WAL)
	e.progress("drain: %d records (%d duplicates skipped) at %.0f events/s; this process (applier and broker) used %.1f µs of CPU and took %.2f page faults per record",
		res.records, res.dups, res.rate, r.ApplierCPUPerEvent, r.ApplierFaultsPerEvent)
	return nil
}

// drainOrdered measures the drain and the floor again on a dataset with
// time-ordered (UUIDv7) request IDs: the second figure, what such IDs buy.
func (e *env) drainOrdered(ctx context.Context, r *Result) error {
	e.progress("generating %d opens and %d deposits with time-ordered request IDs", e.cfg.Accounts, e.cfg.Events)
	data, err := newDataset(e.cfg.Accounts, e.cfg.Events, orderedIDs)
	if err != nil {
		return err
	}
	if e.cfg.runs("references") {
		if r.OrderedFloor, _, err = e.referenceRun(ctx, "floor_ordered", data, writeFloor); err != nil {
			return err
		}
		e.progress("floor, time-ordered request IDs: %.0f events/s", r.OrderedFloor)
	}
	e.settle(ctx)
	res, err := e.drainRun(ctx, "drain_ordered", data, e.cfg.Applier)
	if err != nil {
		return err
	}
	r.OrderedApplier = res.rate
	e.progress("drain, time-ordered request IDs: %d records at %.0f events/s", res.records, res.rate)
	return nil
}

// naive is drain with one event per transaction, on a smaller log.
func (e *env) naive(ctx context.Context, r *Result) error {
	accounts := max(1, min(e.cfg.Accounts, e.cfg.NaiveEvents/10))
	e.progress("naive: generating %d opens and %d deposits", accounts, e.cfg.NaiveEvents)
	data, err := newDataset(accounts, e.cfg.NaiveEvents, randomIDs)
	if err != nil {
		return err
	}
	cfg := e.cfg.Applier
	cfg.MaxBatchRecords = 1
	res, err := e.drainRun(ctx, "naive", data, cfg)
	if err != nil {
		return err
	}
	r.Naive, r.NaiveEvents = res.rate, res.records
	e.progress("naive: %d records at %.0f events/s", res.records, res.rate)
	return nil
}

type drainResult struct {
	// rate counts from the applier's start (joining the group, the first
	// fetch) to its last record; applyRate from its first committed batch.
	rate, applyRate float64
	startup         time.Duration
	// postgres is what Postgres spent per record.
	postgres perEvent
	records  int
	dups     int64
	// cpu and faults are what this process used while the applier drained.
	cpu    time.Duration
	faults int64
}

func (e *env) drainRun(ctx context.Context, phase string, data *dataset, cfg applier.Config) (drainResult, error) {
	pool, _, drop, err := e.freshSchema(ctx, phase, int32(cfg.Concurrency)+2)
	if err != nil {
		return drainResult{}, err
	}
	defer drop()
	topic, cl, del, err := e.topic(ctx, phase)
	if err != nil {
		return drainResult{}, err
	}
	defer del()
	recs, dups := data.records()
	e.progress("%s: producing %d records to %s", phase, len(recs), topic)
	if err := e.produce(ctx, cl, recs); err != nil {
		return drainResult{}, err
	}
	// From here on only the dataset's totals are needed. The drain is the
	// dataset's last reader: dropping it, and collecting it before the applier
	// starts, leaves the applier a heap like its own process would have
	// instead of one that holds hundreds of MB of records for the GC to mark
	// and the heap goal to double (which also sends its allocations into
	// fresh pages, each a page fault).
	nRecs, nEvents, accounts, deposits := len(recs), int64(len(data.events)), data.accounts, data.deposits()
	data.events = nil // recs is not used again either
	runtime.GC()

	a, err := applier.New(e.applierConfig(cfg, topic, e.name(phase)), pool, ledger.Domain().Handler())
	if err != nil {
		return drainResult{}, err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	cpu0, faults0 := processUsage()
	pg0 := e.pgUsage(ctx)
	start := time.Now()
	go func() { done <- a.Run(runCtx) }()
	want := int64(nRecs)
	lastReport := start
	var first time.Time // when the first batch committed
	var firstN int64    // records it held
	for {
		s := a.Stats()
		n := s.Applied + s.Duplicates + s.Conflicts + s.Quarantined
		if first.IsZero() && n > 0 {
			first, firstN = time.Now(), n
		}
		if n >= want {
			break
		}
		select {
		case err := <-done:
			if err == nil {
				err = errors.New("it returned without an error")
			}
			return drainResult{}, fmt.Errorf("the applier stopped before draining: %w", err)
		case <-ctx.Done():
			return drainResult{}, ctx.Err()
		case <-time.After(time.Millisecond):
		}
		if time.Since(lastReport) >= 2*time.Second {
			lastReport = time.Now()
			e.progress("%s: %d/%d records processed", phase, s.Applied+s.Duplicates, want)
		}
	}
	elapsed := time.Since(start)
	cpu1, faults1 := processUsage()
	pg := e.pgUsage(ctx).since(pg0, nRecs)
	cancel()
	if err := <-done; err != nil {
		return drainResult{}, fmt.Errorf("applier: %w", err)
	}
	s := a.Stats()
	if s.Duplicates != int64(dups) || s.Conflicts != 0 || s.Quarantined != 0 || s.Applied != nEvents {
		return drainResult{}, fmt.Errorf("WRONG RESULT: applied %d (want %d), skipped %d duplicates (want %d), %d conflicts and %d quarantined (want 0)",
			s.Applied, nEvents, s.Duplicates, dups, s.Conflicts, s.Quarantined)
	}
	if err := checkLedger(ctx, pool, accounts, deposits, nEvents); err != nil {
		return drainResult{}, err
	}
	res := drainResult{rate: float64(nRecs) / elapsed.Seconds(), records: nRecs, dups: s.Duplicates, cpu: cpu1 - cpu0, faults: faults1 - faults0,
		startup: first.Sub(start), postgres: pg}
	if d := start.Add(elapsed).Sub(first); d > 0 && int64(nRecs) > firstN {
		res.applyRate = float64(int64(nRecs)-firstN) / d.Seconds()
	}
	return res, nil
}
