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
// CommandResult. It returns an
// error, and queues nothing, when the read has not arrived or an event's
// account was not loaded.
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
		if reason := decide(a, ev.Payload); reason != "" {
			results[i].Rejected, results[i].Reason = true, reason
		}
		results[i].Data = commandResult(a.balance) // after the event, or as it stays when rejected
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

// decide applies one event to a in memory and returns "" or why it is rejected.
func decide(a *account, payload any) string {
	switch p := payload.(type) {
	case *ledgerv1.AccountOpened:
		if a.exists {
			return fmt.Sprintf("account %s already exists", p.GetAccountId())
		}
		a.exists, a.balance, a.dirty = true, 0, true
	case *ledgerv1.FundsDeposited:
		switch {
		case !a.exists:
			return fmt.Sprintf("account %s does not exist", p.GetAccountId())
		case a.balance > math.MaxInt64-p.GetAmount():
			return fmt.Sprintf("deposit of %d would overflow the balance %d", p.GetAmount(), a.balance)
		}
		a.balance += p.GetAmount()
		a.dirty = true
	case *ledgerv1.FundsWithdrawn:
		switch {
		case !a.exists:
			return fmt.Sprintf("account %s does not exist", p.GetAccountId())
		case a.balance < p.GetAmount():
			return fmt.Sprintf("insufficient funds: balance %d, withdrawal %d", a.balance, p.GetAmount())
		}
		a.balance -= p.GetAmount()
		a.dirty = true
	default:
		return fmt.Sprintf("unexpected payload %T", payload)
	}
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
