package booking

import (
	"context"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed"
)

// WallClockDomain is the domain broken on purpose: holds and confirms read
// the wall clock instead of the record time, so a hold's expiry depends on
// when the applier ran, and a replay of the topic decides otherwise. The
// tests check that heed's guards catch it.
func WallClockDomain() *heed.Domain {
	return domain(wallClock(holdSeats), wallClock(confirmHold))
}

// wallClock is apply reading time.Now() as the event's time.
func wallClock[T proto.Message](apply heed.ApplyFunc[T]) heed.ApplyFunc[T] {
	return func(ctx context.Context, tx heed.Tx, ev heed.Event[T]) (heed.Result, error) {
		ev.Time = time.Now()
		return apply(ctx, tx, ev)
	}
}
