package applier_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/heed-dev/heed/applier"
)

// Binders racing to record a projection's first dedup window (an applier's
// start and its first assignment do): the one whose INSERT waits for the
// other's gets the window that won, and ErrWindowChanged only when its own
// is another; no failure for having lost the race.
func TestBindWindowRace(t *testing.T) {
	for _, tc := range []struct {
		name        string
		window      time.Duration
		wantChanged bool
	}{
		{"same window", time.Hour, false},
		{"another window", 2 * time.Hour, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pool := counterPool(t, nil)
			ctx := t.Context()
			first, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = first.Rollback(context.Background()) }) // a no-op once committed
			if err := applier.BindWindow(ctx, first, time.Hour); err != nil {
				t.Fatalf("first binder: %v", err)
			}
			second := make(chan error, 1)
			go func() { second <- applier.BindWindow(ctx, pool, tc.window) }()
			waitBlocked(t, pool, applier.BindWindowSQL, "the second binder's INSERT", first)
			if err := first.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			err = <-second
			if changed := errors.Is(err, applier.ErrWindowChanged); changed != tc.wantChanged || err != nil && !changed {
				t.Errorf("second binder of %v, after the first recorded 1h: %v; want ErrWindowChanged: %v", tc.window, err, tc.wantChanged)
			}
		})
	}
}
