package command_test

import (
	"testing"

	"github.com/heed-dev/heed/dedup"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
)

// The outcomes the processed-event table stores are read as CommandStatus
// numbers as they are.
func TestOutcomeNumbers(t *testing.T) {
	for _, c := range []struct {
		outcome dedup.Outcome
		status  commandv1.CommandStatus
	}{
		{dedup.Applied, commandv1.CommandStatus_COMMAND_STATUS_APPLIED},
		{dedup.Rejected, commandv1.CommandStatus_COMMAND_STATUS_REJECTED},
		{dedup.Dropped, commandv1.CommandStatus_COMMAND_STATUS_DROPPED},
	} {
		if int32(c.outcome) != int32(c.status) {
			t.Errorf("dedup.%s = %d, want %d (%s)", c.outcome, int16(c.outcome), int32(c.status), c.status)
		}
	}
}
