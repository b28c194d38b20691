package ledger

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/command"
	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// Publisher writes an event for an aggregate and waits for the broker's ack
// (ingest.Publisher does). Its errors are *connect.Error, returned to callers as
// they are. It must be safe for concurrent use.
type Publisher interface {
	Publish(ctx context.Context, aggregateID, requestID string, event proto.Message) (eventID, token string, err error)
}

// Service implements ledgerv1connect.LedgerServiceHandler: commands go to the
// Publisher, queries read Postgres (GetCommandResult through command.Results).
// It is safe for concurrent use.
type Service struct {
	pub     Publisher
	pool    *pgxpool.Pool
	results *command.Results
	// opts configure results (WithTopicEnds, WithRecordReader).
	opts []command.Option
	// followUpID derives a follow-up's event ID from its origin's and name:
	// the ledger Domain's.
	followUpID func(originID uuid.UUID, originKey, name string) uuid.UUID
}

var _ ledgerv1connect.LedgerServiceHandler = (*Service)(nil)

// ServiceOption configures a Service.
type ServiceOption func(*Service)

// WithTopicEnds has a read whose consistency token is not applied yet check
// the token against the topic's end offsets, so that a token no write to the
// topic returned (forged, or from another topic) is refused at once with
// invalid_argument instead of waiting maxWait. Without it such a read waits.
// It is command.WithTopicEnds.
func WithTopicEnds(ends *consistency.Ends) ServiceOption {
	return func(s *Service) { s.opts = append(s.opts, command.WithTopicEnds(ends)) }
}

// RecordReader reads the record at partition/offset of the service's topic:
// its key and value. It must be safe for concurrent use.
type RecordReader = command.RecordReader

// WithRecordReader lets GetCommandResult tell a command whose outcome retention
// pruned (COMMAND_STATUS_EXPIRED) from one never written at its consistency
// token (COMMAND_STATUS_UNKNOWN), by reading the one record at the token.
// Without it, such a command reads UNKNOWN. It is command.WithRecordReader.
func WithRecordReader(r RecordReader) ServiceOption {
	return func(s *Service) { s.opts = append(s.opts, command.WithRecordReader(r)) }
}

// NewService returns a Service publishing through pub and reading from pool
// (whose search_path is heed's schema). topic is the one the applier applies,
// whose positions consistency tokens are checked against. A read with a
// consistency token waits at most maxWait (and at most its deadline).
func NewService(pub Publisher, pool *pgxpool.Pool, topic string, maxWait time.Duration, opts ...ServiceOption) *Service {
	s := &Service{pub: pub, pool: pool, followUpID: func(id uuid.UUID, key, name string) uuid.UUID { return domain().FollowUpEventID(id, key, name) }}
	for _, o := range opts {
		o(s)
	}
	s.results = command.NewResults(pool, topic, maxWait, append(s.opts,
		command.WithResultType(&ledgerv1.CommandResult{}), command.WithKeyField("account_id"))...)
	return s
}

// OpenAccount publishes AccountOpened.
func (s *Service) OpenAccount(ctx context.Context, req *connect.Request[ledgerv1.OpenAccountRequest]) (*connect.Response[ledgerv1.OpenAccountResponse], error) {
	m := req.Msg
	id, token, err := s.pub.Publish(ctx, m.GetAccountId(), m.GetRequestId(), &ledgerv1.AccountOpened{AccountId: m.GetAccountId()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.OpenAccountResponse{EventId: id, ConsistencyToken: token}), nil
}

// Deposit publishes FundsDeposited.
func (s *Service) Deposit(ctx context.Context, req *connect.Request[ledgerv1.DepositRequest]) (*connect.Response[ledgerv1.DepositResponse], error) {
	m := req.Msg
	id, token, err := s.pub.Publish(ctx, m.GetAccountId(), m.GetRequestId(), &ledgerv1.FundsDeposited{AccountId: m.GetAccountId(), Amount: m.GetAmount()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.DepositResponse{EventId: id, ConsistencyToken: token}), nil
}

// Withdraw publishes FundsWithdrawn.
func (s *Service) Withdraw(ctx context.Context, req *connect.Request[ledgerv1.WithdrawRequest]) (*connect.Response[ledgerv1.WithdrawResponse], error) {
	m := req.Msg
	id, token, err := s.pub.Publish(ctx, m.GetAccountId(), m.GetRequestId(), &ledgerv1.FundsWithdrawn{AccountId: m.GetAccountId(), Amount: m.GetAmount()})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.WithdrawResponse{EventId: id, ConsistencyToken: token}), nil
}

// Transfer publishes TransferDebited, keyed by the source: the transfer's
// first step, whose event ID it returns. Its later steps are follow-ups the
// applier emits (see Applier); GetCommandResult follows them.
func (s *Service) Transfer(ctx context.Context, req *connect.Request[ledgerv1.TransferRequest]) (*connect.Response[ledgerv1.TransferResponse], error) {
	m := req.Msg
	id, token, err := s.pub.Publish(ctx, m.GetFromAccountId(), m.GetRequestId(), &ledgerv1.TransferDebited{
		FromAccountId: m.GetFromAccountId(), ToAccountId: m.GetToAccountId(), Amount: m.GetAmount(),
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&ledgerv1.TransferResponse{EventId: id, ConsistencyToken: token}), nil
}

// GetAccount reads an account, after waiting for its consistency token if given.
// Errors: not_found for an unknown account, invalid_argument for a malformed
// token or one that does not point into the topic (see WithTopicEnds),
// unavailable when the token's write is not applied in time.
func (s *Service) GetAccount(ctx context.Context, req *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	if _, err := s.results.Await(ctx, req.Msg.GetConsistencyToken()); err != nil {
		return nil, err
	}
	var balance int64
	err := s.pool.QueryRow(ctx, `SELECT balance FROM accounts WHERE account_id = $1`, req.Msg.GetAccountId()).Scan(&balance)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("account %s not found (not opened, or its OpenAccount is not applied yet)", req.Msg.GetAccountId()))
	}
	if err != nil {
		return nil, readError(err)
	}
	return connect.NewResponse(&ledgerv1.GetAccountResponse{
		Account: &ledgerv1.Account{AccountId: req.Msg.GetAccountId(), Balance: balance},
	}), nil
}

// GetCommandResult reads a command's outcome by request ID or event ID (within
// an account when account_id is given), as command.Results.Get answers it:
// conflict, with the reason, when the request's consistency token names a
// command that reused the request ID of an earlier one with other content; its
// result once the applier decided it, with the balance after it; quarantined,
// parked or dropped with the reason when the quarantine holds it; otherwise
// pending or, when the request carries a consistency token that is applied,
// expired (its outcome pruned) or unknown (never written at or before the
// token). A request ID used for several accounts names several commands:
// without account_id that is invalid_argument, listing them.
func (s *Service) GetCommandResult(ctx context.Context, req *connect.Request[ledgerv1.GetCommandResultRequest]) (*connect.Response[ledgerv1.GetCommandResultResponse], error) {
	m := req.Msg
	ref := command.Ref{Key: m.GetAccountId(), Token: m.GetConsistencyToken()}
	switch r := m.GetRef().(type) {
	case *ledgerv1.GetCommandResultRequest_RequestId:
		ref.RequestID = r.RequestId
	case *ledgerv1.GetCommandResultRequest_EventId:
		ref.EventID = r.EventId
	}
	o, err := s.results.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.GetCommandResultResponse{
		EventId:   o.EventID.String(),
		Status:    ledgerv1.CommandStatus(o.Status), // the same numbers (TestCommandStatusNumbers)
		Reason:    o.Reason,
		AccountId: o.Key,
	}
	if res, ok := o.Message.(*ledgerv1.CommandResult); ok {
		out.BalanceAfter = res.GetBalanceAfter()
	}
	if err := followTransfer(ctx, s.results.Get, s.followUpID, o, out); err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

// maxSteps bounds how many follow-ups followTransfer reads: a transfer has
// at most two (the credit, then the refund).
const maxSteps = 2

// followTransfer fills in out's transfer_state and steps when o, decided,
// is a step of a transfer: it reads, with get, the outcome of each follow-up
// the steps emitted (the follow-up's event ID is followUpID of the step's and
// the name its result names), until one is not decided yet or emitted none.
// A credit an operator dropped is followed to its refund, which the drop
// emits (onDrop), when the transfer's source is known (followed from the
// debit). The state is the last decided step's, or PENDING when a step it
// emitted is not decided (pending, quarantined, parked, or dropped with no
// refund to follow: see steps). Errors are get's.
func followTransfer(ctx context.Context, get func(context.Context, command.Ref) (*command.Outcome, error),
	followUpID func(uuid.UUID, string, string) uuid.UUID, o *command.Outcome, out *ledgerv1.GetCommandResultResponse) error {
	res, ok := o.Message.(*ledgerv1.CommandResult)
	if !ok {
		return nil
	}
	out.TransferState = res.GetTransferState()
	prev, prevKey, source := o.EventID, o.Key, ""
	for i := 0; i < maxSteps && res.GetNext() != nil; i++ {
		next := res.GetNext()
		if next.GetName() == StepCredit {
			source = o.Key // the debit's account
		}
		id := followUpID(prev, prevKey, next.GetName())
		var err error
		if o, err = get(ctx, command.Ref{EventID: id.String(), Key: next.GetAccountId()}); err != nil {
			return err
		}
		step := &ledgerv1.TransferStep{
			Name: next.GetName(), EventId: id.String(), Status: ledgerv1.CommandStatus(o.Status),
			Reason: o.Reason, AccountId: next.GetAccountId(),
		}
		out.Steps = append(out.Steps, step)
		prev, prevKey = id, next.GetAccountId()
		out.TransferState = ledgerv1.TransferState_TRANSFER_STATE_PENDING // in flight, or stuck (see the step)
		switch res, ok = o.Message.(*ledgerv1.CommandResult); {
		case ok:
			step.BalanceAfter = res.GetBalanceAfter()
			out.TransferState = res.GetTransferState()
		case step.Status == ledgerv1.CommandStatus_COMMAND_STATUS_DROPPED && next.GetName() == StepCredit && source != "":
			res = &ledgerv1.CommandResult{Next: &ledgerv1.NextStep{Name: StepRefund, AccountId: source}}
		default:
			return nil
		}
	}
	return nil
}

func readError(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read from database: %w", err))
}
