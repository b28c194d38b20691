package applier

import "sync/atomic"

// Stats counts what an Applier has done since it was created.
type Stats struct {
	// Batches is the number of committed transactions.
	Batches int64
	// Applied is the number of new events handed to the Handler and committed.
	Applied int64
	// Duplicates is the number of events skipped because their ID was processed before.
	Duplicates int64
	// Conflicts is the number of events whose ID was processed before with other content.
	Conflicts int64
	// Quarantined is the number of records that could never apply (poison).
	Quarantined int64
	// Parked is the number of records held behind a poison record of their key.
	Parked int64
	// Retries is the number of failed batch attempts that were retried.
	Retries int64
	// Stale is the number of batches rolled back because another member moved the position.
	Stale int64
	// LookupRetries is the number of Retries of batch attempts that skipped
	// the dedup lookup and failed (most often on an event recorded before, a
	// duplicate), retried at once with the lookup.
	LookupRetries int64
	// StallRecoveries is how many times the watchdog resumed and re-seeked
	// the fetch of a stalled partition whose worker got nothing to apply;
	// Rejoins how many times it left the group and joined it again because
	// one stayed stalled (see Config.StallTimeout).
	StallRecoveries, Rejoins int64
}

type counters struct {
	batches, applied, duplicates, conflicts, quarantined, parked, retries, stale, lookupRetries, stallRecoveries, rejoins atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Batches:         c.batches.Load(),
		Applied:         c.applied.Load(),
		Duplicates:      c.duplicates.Load(),
		Conflicts:       c.conflicts.Load(),
		Quarantined:     c.quarantined.Load(),
		Parked:          c.parked.Load(),
		Retries:         c.retries.Load(),
		Stale:           c.stale.Load(),
		LookupRetries:   c.lookupRetries.Load(),
		StallRecoveries: c.stallRecoveries.Load(),
		Rejoins:         c.rejoins.Load(),
	}
}
