package applier

import "github.com/twmb/franz-go/pkg/kgo"

// DecodeRecord is decode for the black-box tests: the event rec holds, or the
// reason it is poison ("" when it is not).
func DecodeRecord(h Handler, rec *kgo.Record) (Event, string) {
	d := decode(h, rec)
	return d.event, d.poison
}
