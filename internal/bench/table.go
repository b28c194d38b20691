package bench

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
)

// WriteTable prints r as one table, a row per measured figure.
func WriteTable(w io.Writer, r *Result, cfg Config) error {
	cfg.setDefaults()
	fmt.Fprintf(w, "heed bench: %s; PostgreSQL %s; %d partitions, %s accounts\n\n", r.Machine, r.Postgres, r.Partitions, count(r.Accounts))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "what\tfigure\tdetail")
	batch, conc := cfg.Applier.MaxBatchRecords, cfg.Applier.Concurrency
	if r.PeerBatched > 0 || r.Floor > 0 {
		runs := func(xs []float64) string {
			if len(xs) != 2 {
				return ""
			}
			return fmt.Sprintf("; mean of %s before the drain and %s after", count(int(xs[0])), count(int(xs[1])))
		}
		if c := r.ConsumerReferences; c.ConsumerBatched > 0 && c.ConsumerFloor > 0 {
			fmt.Fprintf(tw, "reference: hand-written batch\t%s events/s\tno heed code: a franz-go group member reads the drain's %s records, decodes envelope and payload, inserts the IDs ON CONFLICT DO NOTHING RETURNING the new ones + their summed account upsert, %s records per transaction, %d at once, offsets committed after; %s from its first transaction; %.1f µs CPU per record (consumer and broker)%s\n",
				count(int(c.ConsumerBatched)), count(c.ConsumerRecords), count(refBatch), conc, count(int(c.ConsumerBatchedFromFirst)), c.ConsumerBatchedCPU, runs(c.ConsumerBatchedRuns))
			fmt.Fprintf(tw, "reference: floor\t%s events/s\tthe same consumer writing the least: processed IDs read back, COPY of the others + summed account upsert, no outcomes; %s from its first transaction; %.1f µs CPU per record%s\n",
				count(int(c.ConsumerFloor)), count(int(c.ConsumerFloorFromFirst)), c.ConsumerFloorCPU, runs(c.ConsumerFloorRuns))
		}
		fmt.Fprintf(tw, "reference: Postgres alone\tbatch %s, floor %s events/s\tthe same batch and floor writes with no broker: the events from memory, no duplicates, no decoding%s%s\n",
			count(int(r.PeerBatched)), count(int(r.Floor)), strings.Replace(runs(r.PeerBatchedRuns), "; ", "; batch: ", 1), strings.Replace(runs(r.FloorRuns), "; ", "; floor: ", 1))
	}
	if r.Applier > 0 {
		ratio := ""
		if r.ApplierToConsumerBatched > 0 {
			ratio = fmt.Sprintf("%.2f × the hand-written batch, %.2f × the floor (both reading the topic); ", r.ApplierToConsumerBatched, r.ApplierToConsumerFloor)
		}
		fmt.Fprintf(tw, "applier drain\t%s events/s\t%srandom request IDs, %s events per transaction; %s records from the topic, %s duplicates skipped; %.1f µs CPU per record (applier and broker)\n",
			count(int(r.Applier)), ratio, count(batch), count(r.ApplierRecords), count(int(r.ApplierDups)), r.ApplierCPUPerEvent)
		ratio = ""
		if r.ApplyRateToConsumerBatched > 0 {
			ratio = fmt.Sprintf("%.2f × the hand-written batch, %.2f × the floor from their first transactions; ", r.ApplyRateToConsumerBatched, r.ApplyRateToConsumerFloor)
		}
		fmt.Fprintf(tw, "applier drain, from its first batch\t%s events/s\t%sleaves out the %.0f ms to join the group and fetch\n", count(int(r.ApplyRate)), ratio, r.ApplierStartup)
	}
	if r.ApplierPostgres.WAL > 0 {
		fmt.Fprintf(tw, "Postgres per event\t%.1f µs CPU, %.0f B WAL\tdrain; the hand-written batch %.1f µs, %.0f B; the floor %.1f µs, %.0f B (reading the topic, per record); Postgres alone %.1f µs, %.0f B and %.1f µs, %.0f B (CPU: postgres processes on this machine)\n",
			r.ApplierPostgres.CPU, r.ApplierPostgres.WAL, r.ConsumerBatchedPostgres.CPU, r.ConsumerBatchedPostgres.WAL, r.ConsumerFloorPostgres.CPU, r.ConsumerFloorPostgres.WAL,
			r.PeerBatchedPostgres.CPU, r.PeerBatchedPostgres.WAL, r.FloorPostgres.CPU, r.FloorPostgres.WAL)
	}
	if r.OrderedApplier > 0 {
		floor := ""
		if r.OrderedFloor > 0 {
			floor = fmt.Sprintf("; the floor with them: %s events/s", count(int(r.OrderedFloor)))
		}
		fmt.Fprintf(tw, "applier drain, UUIDv7 request IDs\t%s events/s\ttime-ordered IDs insert near the end of the processed-event index%s\n", count(int(r.OrderedApplier)), floor)
	}
	if r.TransfersPerS > 0 {
		ratio := ""
		if r.TransferEventsToDrain > 0 {
			ratio = fmt.Sprintf(", %.2f × the drain's events/s", r.TransferEventsToDrain)
		}
		fmt.Fprintf(tw, "transfers, settled end to end\t%s transfers/s\t%s events/s (debit and credit)%s; %s transfers of 1 between %s accounts, %.0f%% across partitions, each credit through the outbox and the relay; from the applier's start to the last credit applied\n",
			count(int(r.TransfersPerS)), count(int(r.TransferEventsPerS)), ratio, count(r.Transfers), count(r.TransferAccounts), 100*r.TransferCrossPartition)
	}
	if r.Rebuild > 0 {
		ratio := ""
		if r.RebuildToFloor > 0 {
			ratio = fmt.Sprintf("%.2f × the floor of Postgres alone (the COPY ceiling); ", r.RebuildToFloor)
		}
		fmt.Fprintf(tw, "rebuild: replay into a fresh schema	%s events/s	%sheed rebuild's defaults, %s records from the start (schema created and migrated) to the topic's end; Postgres %.1f µs CPU, %.0f B WAL per record\n",
			count(int(r.Rebuild)), ratio, count(r.RebuildEvents), r.RebuildPostgres.CPU, r.RebuildPostgres.WAL)
	}
	if r.Naive > 0 {
		ratio := ""
		if r.ApplierToNaive > 0 {
			ratio = fmt.Sprintf("; the batched applier is %.0f× faster", r.ApplierToNaive)
		}
		fmt.Fprintf(tw, "one event per transaction\t%s events/s\t%s records%s\n", count(int(r.Naive)), count(r.NaiveEvents), ratio)
	}
	if r.NoopRPS > 0 {
		fmt.Fprintf(tw, "ingest: no-op handler\t%s req/s\tp50 %.2f ms, p99 %.2f ms; %d %s clients for %s; %.0f µs CPU per command\n", count(int(r.NoopRPS)), r.NoopP50, r.NoopP99, r.Clients, r.Protocol, cfg.Duration, r.NoopCPUPerCommand)
	}
	if r.IngestRPS > 0 {
		ratio := ""
		if r.IngestToNoop > 0 {
			ratio = fmt.Sprintf("; %.2f × the no-op handler", r.IngestToNoop)
		}
		fmt.Fprintf(tw, "ingest: Deposit to Kafka\t%s req/s\tp50 %.2f ms, p99 %.2f ms%s; %.0f µs CPU per command, %.1f commands per produce request\n", count(int(r.IngestRPS)), r.IngestP50, r.IngestP99, ratio, r.IngestCPUPerCommand, r.IngestRecordsPerProduce)
	}
	if r.E2ECommands > 0 {
		fmt.Fprintf(tw, "end to end: ack → readable\tp50 %.2f ms, p99 %.2f ms\tmax %.2f ms; %s commands offered at %s/s, %s/s acknowledged, ack p99 %.2f ms\n",
			r.E2EP50, r.E2EP99, r.E2EMax, count(r.E2ECommands), count(r.E2EOffered), count(int(r.E2EAchieved)), r.E2EAckP99)
	}
	if r.RSSEvents > 0 {
		quarters := make([]string, len(r.RSSByQuarter))
		for i, q := range r.RSSByQuarter {
			quarters[i] = fmt.Sprintf("%.0f", q)
		}
		fmt.Fprintf(tw, "heed apply memory\tpeak RSS %.0f MiB\t%s MiB at 25/50/75/100%% of %s events, %s events/s\n",
			r.RSSPeakMiB, strings.Join(quarters, "/"), count(r.RSSEvents), count(int(r.RSSApplier)))
		if r.AuditPeakMiB > 0 {
			fmt.Fprintf(tw, "heed audit memory\tpeak RSS %.0f MiB\tover the same %s events and projection, in %.1f s\n", r.AuditPeakMiB, count(r.RSSEvents), r.AuditSeconds)
		}
	}
	return tw.Flush()
}

// count formats n (not negative) with thousands separators.
func count(n int) string {
	s := fmt.Sprint(n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
