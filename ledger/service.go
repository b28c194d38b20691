package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
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
// Publisher, queries read Postgres. It is safe for concurrent use.
type Service struct {
	pub     Publisher
	pool    *pgxpool.Pool
	topic   string
	maxWait time.Duration
	ends    *consistency.Ends
	// readRecord, if set, reads a record at a token (WithRecordReader).
	readRecord RecordReader
}

var _ ledgerv1connect.LedgerServiceHandler = (*Service)(nil)

// ServiceOption configures a Service.
type ServiceOption func(*Service)

// WithTopicEnds has a read whose consistency token is not applied yet check
// the token against the topic's end offsets, so that a token no write to the
// topic returned (forged, or from another topic) is refused at once with
// invalid_argument instead of waiting maxWait. Without it such a read waits.
func WithTopicEnds(ends *consistency.Ends) ServiceOption {
	return func(s *Service) { s.ends = ends }
}

// NewService returns a Service publishing through pub and reading from pool
// (whose search_path is heed's schema). topic is the one the applier applies,
// whose positions consistency tokens are checked against. A read with a
// consistency token waits at most maxWait (and at most its deadline).
func NewService(pub Publisher, pool *pgxpool.Pool, topic string, maxWait time.Duration, opts ...ServiceOption) *Service {
	s := &Service{pub: pub, pool: pool, topic: topic, maxWait: maxWait}
	for _, o := range opts {
		o(s)
	}
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

// GetAccount reads an account, after waiting for its consistency token if given.
// Errors: not_found for an unknown account, invalid_argument for a malformed
// token or one that does not point into the topic (see WithTopicEnds),
// unavailable when the token's write is not applied in time.
func (s *Service) GetAccount(ctx context.Context, req *connect.Request[ledgerv1.GetAccountRequest]) (*connect.Response[ledgerv1.GetAccountResponse], error) {
	if _, err := s.await(ctx, req.Msg.GetConsistencyToken()); err != nil {
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
// an account when account_id is given): conflict, with the reason, when the
// request's consistency token names a command that reused the request ID of an
// earlier one with other content (both share the event ID: only the token
// tells them apart, and without it the earlier one is answered; see reusedAt
// for such a command still parked); its result
// once the applier decided it; quarantined, parked or dropped with the reason
// when the quarantine holds it; otherwise pending or, when the request carries
// a consistency token that is applied, unknown (never written at or before the
// token). A request ID used for several accounts names several commands:
// without account_id that is invalid_argument, listing them.
func (s *Service) GetCommandResult(ctx context.Context, req *connect.Request[ledgerv1.GetCommandResultRequest]) (*connect.Response[ledgerv1.GetCommandResultResponse], error) {
	var id uuid.UUID
	switch ref := req.Msg.GetRef().(type) {
	case *ledgerv1.GetCommandResultRequest_RequestId:
		id = envelope.EventID(ref.RequestId)
	case *ledgerv1.GetCommandResultRequest_EventId:
		id = uuid.MustParse(ref.EventId) // validated as a UUID by the interceptor
	}
	tok, err := s.await(ctx, req.Msg.GetConsistencyToken())
	if err != nil {
		return nil, err
	}
	account := req.Msg.GetAccountId()
	out := &ledgerv1.GetCommandResultResponse{EventId: id.String(), Status: ledgerv1.CommandStatus_COMMAND_STATUS_PENDING, AccountId: account}
	if reused, err := s.reusedAt(ctx, tok, id, account); err != nil || reused != nil {
		return reused, err
	}
	rows, err := dedup.Results(ctx, s.pool, id)
	if err != nil {
		return nil, readError(err)
	}
	var found []dedup.Row
	for _, r := range rows {
		if account == "" || r.Key == account || r.Key == "" { // "": recorded before rows named their account
			found = append(found, r)
		}
	}
	switch {
	case len(found) > 1:
		accounts := make([]string, len(found))
		for i, r := range found {
			accounts[i] = r.Key
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"this request_id names %d commands, one for each of the accounts %s: give account_id to say which", len(found), strings.Join(accounts, ", ")))
	case len(found) == 1:
		r := found[0]
		out.Status, out.Reason = ledgerv1.CommandStatus(r.Outcome), r.Reason
		if r.Key != "" {
			out.AccountId = r.Key
		}
		var res ledgerv1.CommandResult
		if err := proto.Unmarshal(r.Result, &res); err != nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("the recorded result of event %s is not a CommandResult: %s", id, applier.ProtoError(err)))
		}
		out.BalanceAfter = res.GetBalanceAfter()
		return connect.NewResponse(out), nil
	}
	outcome, reason, err := applier.QuarantineOutcome(ctx, s.pool, s.topic, id, account)
	if err != nil {
		return nil, readError(err)
	}
	switch outcome {
	case applier.OutcomeQuarantined:
		out.Status, out.Reason = ledgerv1.CommandStatus_COMMAND_STATUS_QUARANTINED, reason
	case applier.OutcomeParked:
		out.Status, out.Reason = ledgerv1.CommandStatus_COMMAND_STATUS_PARKED, reason
	case applier.OutcomeDropped:
		out.Status, out.Reason = ledgerv1.CommandStatus_COMMAND_STATUS_DROPPED, reason
	case applier.NotQuarantined:
		if err := s.notFound(ctx, out, tok, id, account); err != nil {
			return nil, err
		}
	}
	return connect.NewResponse(out), nil
}

// notFound fills in out for a command of which neither the processed events
// nor the quarantine know anything: with a consistency token (whose position
// is applied), expired when the record at the token is the command's and
// retention pruned, else unknown; without one, pending.
func (s *Service) notFound(ctx context.Context, out *ledgerv1.GetCommandResultResponse, tok *consistency.Token, id uuid.UUID, account string) error {
	pr, err := s.pruned(ctx)
	if err != nil {
		return readError(err)
	}
	if tok == nil {
		if pr.ok {
			out.Reason = pr.pendingReason()
		}
		return nil
	}
	if pr.ok {
		expired, err := s.expired(ctx, *tok, id, account)
		if err != nil {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read the record at the consistency token: %w", err))
		}
		if expired {
			out.Status, out.Reason = ledgerv1.CommandStatus_COMMAND_STATUS_EXPIRED, pr.expiredReason()
			return nil
		}
	}
	out.Status = ledgerv1.CommandStatus_COMMAND_STATUS_UNKNOWN
	out.Reason = "no command with this ID was applied, rejected, quarantined or parked at or before the consistency token's position: if the token is the command's own, the command was never written"
	return nil
}

// await waits until the write named by token is applied, bounded by maxWait,
// and returns the token parsed; nil for no token.
func (s *Service) await(ctx context.Context, token string) (*consistency.Token, error) {
	if token == "" {
		return nil, nil
	}
	t, err := consistency.Parse(token)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.maxWait)
	defer cancel()
	if err := consistency.WaitWithin(ctx, s.pool, s.topic, t, s.ends); err != nil {
		switch {
		case errors.Is(err, consistency.ErrNotYetApplied):
			return nil, connect.NewError(connect.CodeUnavailable, fmt.Errorf("%w; retry the read", err))
		case errors.Is(err, consistency.ErrNotInTopic):
			return nil, connect.NewError(connect.CodeInvalidArgument, err)
		}
		return nil, readError(err)
	}
	return &t, nil
}

func readError(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read from database: %w", err))
}
