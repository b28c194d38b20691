package applier

import "github.com/twmb/franz-go/pkg/kgo"

// DecodeRecord is decode for the black-box tests: the event rec holds, or the
// reason it is poison ("" when it is not).
func DecodeRecord(h Handler, rec *kgo.Record) (Event, string) {
	d := decode(h, rec)
	return d.event, d.poison
}

// BreakFetch pauses fetching partition p in the member's Kafka client behind
// its worker's back: what a lost resume, or a client that lost the
// partition's fetch, leaves behind. Call it only while Run runs.
func BreakFetch(a *Applier, p int32) {
	a.cl.PauseFetchPartitions(map[string][]int32{a.cfg.Topic: {p}})
}

// ResumelessRecovery makes the watchdog's first recovery (resume and
// re-seek) do nothing, so that only a rejoin brings a stalled partition back.
func ResumelessRecovery(a *Applier) { a.dog.resumeless.Store(true) }
