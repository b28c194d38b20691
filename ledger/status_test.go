package ledger_test

import (
	"testing"

	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// GetCommandResult maps heed.command.v1.CommandStatus to
// heed.ledger.v1.CommandStatus by number: both enums hold the same names with
// the same numbers.
func TestCommandStatusNumbers(t *testing.T) {
	if len(ledgerv1.CommandStatus_name) != len(commandv1.CommandStatus_name) {
		t.Errorf("heed.ledger.v1.CommandStatus has %d values, heed.command.v1.CommandStatus %d", len(ledgerv1.CommandStatus_name), len(commandv1.CommandStatus_name))
	}
	for n, name := range commandv1.CommandStatus_name {
		if got := ledgerv1.CommandStatus_name[n]; got != name {
			t.Errorf("CommandStatus %d: heed.command.v1 names it %s, heed.ledger.v1 %q", n, name, got)
		}
	}
}
