package ledger

import (
	"errors"

	"github.com/heed-dev/heed"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// errUndroppable refuses the drop of a transfer's refund: it is the
// transfer's last compensation, and dropping it would lose its amount.
var errUndroppable = errors.New("a transfer's refund cannot be dropped: it is the only way its amount returns to the source; re-drive it instead once it can apply")

// onDrop is the ledger's rule for an operator's drop (`heed quarantine
// drop`) of a quarantined or parked record, by its decoded payload: a
// follow-up must run its compensation or be refused, so that money is never
// lost in flight.
//   - A transfer's credit, dropped, never reaches its destination: the drop
//     emits its refund, the follow-up a rejected credit emits (named
//     StepRefund, so a credit has one refund whether rejected or dropped).
//   - A transfer's refund is the compensation itself: its drop is refused
//     (errUndroppable).
//   - Any other record (a transfer's debit included: it moved no money yet)
//     drops with nothing to compensate: a zero Emit.
//
// It is written for the core's drop hook (issue 28; not in heed yet), which
// would call it when it carries out a drop decision, in log order, and write
// the emit to the outbox in that transaction, and when `heed quarantine drop`
// is asked, to refuse the drop up front.
func onDrop(payload any) (heed.Emit, error) {
	switch p := payload.(type) {
	case *ledgerv1.TransferCredited:
		return heed.FollowUp(StepRefund, p.GetFromAccountId(), &ledgerv1.TransferRefunded{
			FromAccountId: p.GetFromAccountId(), ToAccountId: p.GetToAccountId(), Amount: p.GetAmount(),
		}), nil
	case *ledgerv1.TransferRefunded:
		return heed.Emit{}, errUndroppable
	}
	return heed.Emit{}, nil
}
