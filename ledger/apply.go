package ledger

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/heed-dev/heed"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/pgarray"
)

// Applier applies ledger events to the accounts table and returns each
// command's result for the applier to record. It is the domain's
// heed.BatchHandler (the batched form): one batch of events costs the applier
// two round trips to Postgres. It is stateless and safe for concurrent use.
type Applier struct{}

var _ heed.BatchHandler = Applier{}

// accountIDPattern is the rule ledger.proto gives account_id, which
// validAccountID checks.
const accountIDPattern = `^[A-Za-z0-9_.-]{1,64}$`

// validAccountID reports whether id matches accountIDPattern, without a
// regexp: the applier checks every record it reads.
func validAccountID(id string) bool {
	if len(id) == 0 || len(id) > 64 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_', c == '.', c == '-':
		default:
			return false
		}
	}
	return true
}

// Decode unmarshals the payload of a ledger event and checks what the command
// side validated, so that a record written around ingest (kcat, a bug) that
// breaks the rules is quarantined instead of applied: the rules Domain gives
// its event types.
func (Applier) Decode(env *envelopev1.Envelope) (any, error) {
	return decoder().Decode(env)
}

type account struct {
	balance int64
	exists  bool
	dirty   bool
	// read is the balance read from the database, valid when stored is set.
	read   int64
	stored bool
}

// Apply applies a batch in bulk inside tx, in two round trips: it reads every
// account the batch touches with one query (Load), decides each event in log
// order in memory, then writes the changed accounts (Loaded.Queue). It returns
// each event's result, which the applier records. Errors are wrapped with what
// failed; tx must then be rolled back.
func (h Applier) Apply(ctx context.Context, tx pgx.Tx, events []heed.Record) ([]heed.Result, error) {
	if len(events) == 0 {
		return nil, nil
	}
	b := &pgx.Batch{}
	l := h.Load(b, events)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("read accounts: %w", err)
	}
	b = &pgx.Batch{}
	results, err := l.Queue(events, b)
	if err != nil {
		return nil, err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("write accounts: %w", err)
	}
	return results, nil
}

// Load queues onto b the read of every account events touch, in one query, and
// returns the accounts its callback fills in when b is sent. The read's errors
// come out of b's results.
func (Applier) Load(b *pgx.Batch, events []heed.Record) heed.Loaded {
	l := &loaded{accounts: make(map[string]*account)}
	ids := make(pgarray.Texts, 0, len(events))
	for _, ev := range events {
		if _, ok := l.accounts[ev.AggregateID]; !ok {
			l.accounts[ev.AggregateID] = &account{}
			ids = append(ids, ev.AggregateID)
		}
	}
	b.Queue(`SELECT account_id, balance FROM accounts WHERE account_id = ANY($1::text[])`, ids).Query(l.read)
	return l
}

// loaded holds the accounts a batch touches, as read by Load and then changed
// in memory by Queue.
type loaded struct {
	accounts map[string]*account
	// done is set once the read's whole result has arrived.
	done bool
}

func (l *loaded) read(rows pgx.Rows) error {
	for rows.Next() {
		var (
			id      string
			balance int64
		)
		if err := rows.Scan(&id, &balance); err != nil {
			return fmt.Errorf("scan account: %w", err)
		}
		a, ok := l.accounts[id]
		if !ok {
			return fmt.Errorf("read account %q, which was not asked for", id)
		}
		a.balance, a.exists = balance, true
		a.read, a.stored = balance, true
	}
	if err := rows.Err(); err != nil {
		return err // the query's own error, reported by whoever sent the batch
	}
	l.done = true
	return nil
}

// Queue decides events in log order in memory, from the accounts Load read and
// the effects of the events before them, queues onto b the writes of the
// changed accounts and returns every event's result: rejected with the reason,
// or applied, with the balance after it (as it stays, when rejected) as a
// CommandResult, and for a transfer's step where the transfer stands and the
// follow-up it emits (the credit of an applied debit, the refund of a rejected
// credit). It returns an error, and queues nothing, when the read has not
// arrived or an event's account was not loaded, and a heed.Quarantine error
// for a refund that cannot apply: money is never dropped in silence.
func (l *loaded) Queue(events []heed.Record, b *pgx.Batch) ([]heed.Result, error) {
	if !l.done {
		return nil, errors.New("decide events: the accounts were not read (the batch holding the read was not sent, or failed)")
	}
	results := make([]heed.Result, len(events))
	for i, ev := range events {
		a, ok := l.accounts[ev.AggregateID]
		if !ok {
			return nil, fmt.Errorf("decide event %s: account %q was not loaded", ev.ID, ev.AggregateID)
		}
		d := decide(a, ev.Payload)
		if d.quarantine != "" {
			return nil, heed.Quarantine(ev.Offset, d.quarantine)
		}
		if d.reason != "" {
			results[i].Rejected, results[i].Reason = true, d.reason
		}
		if d.next.Event != nil {
			results[i].Emits = []heed.Emit{d.next}
		}
		// after the event, or as it stays when rejected
		if d.transfer == ledgerv1.TransferState_TRANSFER_STATE_UNSPECIFIED {
			results[i].Data = commandResult(a.balance)
		} else {
			results[i].Data = transferResult(a.balance, d.transfer, d.next)
		}
	}
	queueAccounts(b, l.accounts)
	return results, nil
}

// commandResult is the CommandResult for an applied command that left the
// balance at balance, marshaled as proto.Marshal would: field 1, a varint,
// left out when zero. Written by hand because it runs for every event.
func commandResult(balance int64) []byte {
	if balance == 0 {
		return nil
	}
	b := make([]byte, 0, 11)
	b = protowire.AppendTag(b, 1, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(balance))
}

// transferResult is the CommandResult of a transfer's step, marshaled as
// proto.Marshal would: the balance, the transfer's state and, when the step
// emitted one, its follow-up (next's Name and Key).
func transferResult(balance int64, state ledgerv1.TransferState, next heed.Emit) []byte {
	b := commandResult(balance)
	b = protowire.AppendTag(b, 2, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(state))
	if next.Event == nil {
		return b
	}
	var n []byte
	n = protowire.AppendTag(n, 1, protowire.BytesType)
	n = protowire.AppendString(n, next.Name)
	n = protowire.AppendTag(n, 2, protowire.BytesType)
	n = protowire.AppendString(n, next.Key)
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	return protowire.AppendBytes(b, n)
}

// The names of a transfer's follow-ups: persisted in their IDs (see
// heed.Emit), never to change.
const (
	// StepCredit is the follow-up of an applied TransferDebited: the
	// TransferCredited of the destination.
	StepCredit = "credit"
	// StepRefund is the follow-up of a rejected TransferCredited: the
	// TransferRefunded of the source.
	StepRefund = "refund"
)

// decision is what deciding one event did to its account.
type decision struct {
	// reason is why the event is rejected; "" when applied.
	reason string
	// transfer is where the transfer stands after a transfer's step;
	// unspecified for other events.
	transfer ledgerv1.TransferState
	// next is the follow-up the event emits; its Event is nil for none.
	next heed.Emit
	// quarantine is why the event can never apply; "" when decided.
	quarantine string
}

// decide applies one event to a in memory and returns what it did.
func decide(a *account, payload any) decision {
	const (
		pending  = ledgerv1.TransferState_TRANSFER_STATE_PENDING
		settled  = ledgerv1.TransferState_TRANSFER_STATE_SETTLED
		refunded = ledgerv1.TransferState_TRANSFER_STATE_REFUNDED
		rejected = ledgerv1.TransferState_TRANSFER_STATE_REJECTED
	)
	switch p := payload.(type) {
	case *ledgerv1.AccountOpened:
		if a.exists {
			return decision{reason: fmt.Sprintf("account %s already exists", p.GetAccountId())}
		}
		a.exists, a.balance, a.dirty = true, 0, true
	case *ledgerv1.FundsDeposited:
		if reason := credit(a, p.GetAccountId(), p.GetAmount(), "deposit"); reason != "" {
			return decision{reason: reason}
		}
	case *ledgerv1.FundsWithdrawn:
		if reason := debit(a, p.GetAccountId(), p.GetAmount(), "withdrawal"); reason != "" {
			return decision{reason: reason}
		}
	case *ledgerv1.TransferDebited:
		if reason := debit(a, p.GetFromAccountId(), p.GetAmount(), "transfer"); reason != "" {
			return decision{reason: reason, transfer: rejected}
		}
		return decision{transfer: pending, next: heed.FollowUp(StepCredit, p.GetToAccountId(), &ledgerv1.TransferCredited{
			FromAccountId: p.GetFromAccountId(), ToAccountId: p.GetToAccountId(), Amount: p.GetAmount(),
		})}
	case *ledgerv1.TransferCredited:
		if reason := credit(a, p.GetToAccountId(), p.GetAmount(), "transfer"); reason != "" {
			return decision{reason: reason + "; refunding " + p.GetFromAccountId(), transfer: pending,
				next: heed.FollowUp(StepRefund, p.GetFromAccountId(), &ledgerv1.TransferRefunded{
					FromAccountId: p.GetFromAccountId(), ToAccountId: p.GetToAccountId(), Amount: p.GetAmount(),
				})}
		}
		return decision{transfer: settled}
	case *ledgerv1.TransferRefunded:
		if reason := credit(a, p.GetFromAccountId(), p.GetAmount(), "refund"); reason != "" {
			return decision{quarantine: "the refund of a transfer cannot apply: " + reason}
		}
		return decision{transfer: refunded}
	default:
		return decision{reason: fmt.Sprintf("unexpected payload %T", payload)}
	}
	return decision{}
}

// credit adds amount to a, the account id, or returns why it cannot: what,
// a deposit say, names the credit.
func credit(a *account, id string, amount int64, what string) string {
	switch {
	case !a.exists:
		return fmt.Sprintf("account %s does not exist", id)
	case a.balance > math.MaxInt64-amount:
		return fmt.Sprintf("%s of %d would overflow the balance %d", what, amount, a.balance)
	}
	a.balance += amount
	a.dirty = true
	return ""
}

// debit takes amount from a, the account id, or returns why it cannot: what,
// a withdrawal say, names the debit.
func debit(a *account, id string, amount int64, what string) string {
	switch {
	case !a.exists:
		return fmt.Sprintf("account %s does not exist", id)
	case a.balance < amount:
		return fmt.Sprintf("insufficient funds: balance %d, %s %d", a.balance, what, amount)
	}
	a.balance -= amount
	a.dirty = true
	return ""
}

// queueAccounts queues onto b the writes of the changed accounts, if any:
// accounts the batch read are updated only where their balance is still the
// one read, accounts it opened are inserted only where none exists yet.
// Touching fewer rows than it changed fails the statement in Postgres (the
// accounts_written function) with a serialization failure, a transient error:
// another transaction wrote an account since the batch read it (the same
// account's events in two partitions), so the batch is rolled back and retried
// from the new balance rather than losing an update. The check is made in
// Postgres, not in a callback, because the batch's COMMIT is already on its way
// when the write's answer arrives.
func queueAccounts(b *pgx.Batch, accounts map[string]*account) {
	var updates, inserts pgarray.Texts
	for id, a := range accounts {
		switch {
		case !a.dirty:
		case a.stored:
			updates = append(updates, id)
		default:
			inserts = append(inserts, id)
		}
	}
	if len(updates) > 0 {
		slices.Sort(updates) // one lock order for every writer
		olds, news := make(pgarray.Int8s, len(updates)), make(pgarray.Int8s, len(updates))
		for i, id := range updates {
			olds[i], news[i] = accounts[id].read, accounts[id].balance
		}
		b.Queue(`WITH w AS (UPDATE accounts AS a SET balance = u.balance
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS u(account_id, read, balance)
WHERE a.account_id = u.account_id AND a.balance = u.read RETURNING 1)
SELECT accounts_written(count(*), $4) FROM w`, updates, olds, news, len(updates))
	}
	if len(inserts) > 0 {
		slices.Sort(inserts)
		balances := make(pgarray.Int8s, len(inserts))
		for i, id := range inserts {
			balances[i] = accounts[id].balance
		}
		b.Queue(`WITH w AS (INSERT INTO accounts (account_id, balance)
SELECT * FROM unnest($1::text[], $2::int8[])
ON CONFLICT (account_id) DO NOTHING RETURNING 1)
SELECT accounts_written(count(*), $3) FROM w`, inserts, balances, len(inserts))
	}
}
