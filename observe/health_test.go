package observe_test

import (
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/observe"
)

// The stalled check fails, naming each partition, only for partitions that
// have not moved for its bound.
func TestStallCheck(t *testing.T) {
	var stalls []applier.Stall
	check := observe.StallCheck(func() []applier.Stall { return stalls }, 30*time.Second)
	if check.Name != "stalled" {
		t.Errorf("name %q, want stalled", check.Name)
	}
	for _, tc := range []struct {
		name   string
		stalls []applier.Stall
		want   string // "" for ready
	}{
		{"none", nil, ""},
		{"short", []applier.Stall{{Partition: 1, Applied: 5, End: 9, Since: 10 * time.Second}}, ""},
		{"long", []applier.Stall{{Partition: 1, Applied: 5, End: 9, Since: 10 * time.Second}, {Partition: 3, Applied: 7, End: 70, Since: 45 * time.Second}},
			"partitions with records waiting have not moved for 30s (--ready-max-stall): partition 3 at 7 of 70, not moved for 45s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			stalls = tc.stalls
			err := check.Fn(t.Context())
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("check: %v, want ready", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("check: %v, want %q", err, tc.want)
			}
		})
	}
}
