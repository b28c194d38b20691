package bench

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/rebuild"
	"github.com/heed-dev/heed/schema"
)

// rebuildPhase replays a topic of the dataset (random request IDs, 1%
// duplicates) into a fresh schema with heed rebuild's defaults, from opening
// the rebuild (creating and migrating the schema) until it reached the
// topic's end, and checks the result: the replay speed, next to the floor
// (the COPY ceiling) measured in the same run.
func (e *env) rebuildPhase(ctx context.Context, r *Result) error {
	e.progress("rebuild: generating %d opens and %d deposits", e.cfg.Accounts, e.cfg.Events)
	data, err := newDataset(e.cfg.Accounts, e.cfg.Events, randomIDs)
	if err != nil {
		return err
	}
	topic, cl, del, err := e.topic(ctx, "rebuild")
	if err != nil {
		return err
	}
	defer del()
	recs, dups := data.records()
	e.progress("rebuild: producing %d records to %s", len(recs), topic)
	if err := e.produce(ctx, cl, recs); err != nil {
		return err
	}
	nRecs, nEvents, accounts, deposits := len(recs), int64(len(data.events)), data.accounts, data.deposits()
	data.events = nil
	runtime.GC()

	into := e.name("rebuild")
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := e.admin.Exec(dctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{into}.Sanitize()+` CASCADE`); err != nil {
			e.cfg.Logger.Warn("drop the benchmark's schema", "schema", into, "err", err)
		}
	}()
	pg0 := e.pgUsage(ctx)
	start := time.Now()
	rb, err := rebuild.Open(ctx, rebuild.Config{
		DatabaseURL: e.cfg.DatabaseURL,
		Live:        into + "_live", // none: the rebuild runs to the topic's end
		Into:        into,
		Sets:        ledger.Schema,
		Handler:     ledger.Domain().Handler(),
		Applier:     applier.Config{Brokers: e.broker.Addrs(), Topic: topic, Group: into},
		Logger:      e.cfg.Logger.With("component", "rebuild"),
	})
	if err != nil {
		return err
	}
	defer rb.Close()
	if _, err := rb.CatchUp(ctx, false); err != nil {
		return err
	}
	elapsed := time.Since(start)
	pg := e.pgUsage(ctx).since(pg0, nRecs)
	s := rb.Stats()
	if s.Duplicates != int64(dups) || s.Applied != nEvents || s.Quarantined != 0 {
		return fmt.Errorf("WRONG RESULT: the rebuild applied %d (want %d) and skipped %d duplicates (want %d), %d quarantined", s.Applied, nEvents, s.Duplicates, dups, s.Quarantined)
	}
	pool, err := schema.Connect(ctx, e.cfg.DatabaseURL, into, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkLedger(ctx, pool, accounts, deposits, nEvents); err != nil {
		return err
	}
	r.RebuildEvents = nRecs
	r.Rebuild = float64(nRecs) / elapsed.Seconds()
	r.RebuildPostgres = pg
	e.progress("rebuild: %d records replayed into a fresh schema in %v, %.0f events/s; Postgres used %.1f µs of CPU and wrote %.0f bytes of WAL per record",
		nRecs, elapsed.Round(time.Millisecond), r.Rebuild, pg.CPU, pg.WAL)
	return nil
}
