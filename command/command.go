// Package command reads back what became of a command, the same way for every
// domain: heed records each command's outcome (dedup.Outcome) and the
// domain's result in the processed-event table, in the transaction that
// applied it, and keeps in the quarantine the commands it could not apply.
// Results reads those, after waiting for a consistency token when one is
// given (read-your-writes), and answers with a heed.command.v1.CommandStatus;
// Service serves it as heed.command.v1.CommandService, with the domain's result
// as a typed message.
//
// A domain's own read queries use Results.Await for read-your-writes.
package command

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
)

// Querier is what Results reads through: a *pgxpool.Pool (or a connection)
// whose search_path is the domain's heed schema. It must be safe for
// concurrent use when Results is used concurrently.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Results reads commands' outcomes from a domain's projection: the
// processed-event table, the quarantine, the applied positions and the
// retention cutoff that the domain's applier keeps. It is safe for concurrent
// use; it holds no state but its configuration.
type Results struct {
	db      Querier
	topic   string
	maxWait time.Duration
	ends    *consistency.Ends
	// readRecord, if set, reads a record at a token (WithRecordReader).
	readRecord RecordReader
	// eventID derives an event ID from a request ID (WithEventID).
	eventID func(requestID string) uuid.UUID
	// result is the domain's result type (WithResultType); nil for none.
	result proto.Message
	// keyField names the request field that carries the key (WithKeyField).
	keyField string
}

// Option configures Results.
type Option func(*Results)

// WithTopicEnds has a read whose consistency token is not applied yet check
// the token against the topic's end offsets, so that a token no write to the
// topic returned (forged, or from another topic) is refused at once with
// invalid_argument instead of waiting maxWait. Without it such a read waits.
func WithTopicEnds(ends *consistency.Ends) Option {
	return func(r *Results) { r.ends = ends }
}

// WithEventID sets how a request ID maps to its event ID: the derivation the
// domain's publisher uses. The default is envelope.EventID.
func WithEventID(f func(requestID string) uuid.UUID) Option {
	return func(r *Results) { r.eventID = f }
}

// WithResultType declares the domain's result message: the type of the bytes
// its handler records for a command it decides (applier.Result.Data), e.g.
// &ledgerv1.CommandResult{}. Get then checks that a decided command's result
// is one, and gives it as Outcome.Message; Service answers it as the
// response's result. prototype is only used for its type. Without it, the
// result is only given as bytes (Outcome.Result), and Service answers none.
func WithResultType(prototype proto.Message) Option {
	return func(r *Results) { r.result = prototype }
}

// WithKeyField names the field that carries the key in the domain's own API
// (e.g. "account_id"), for the error that asks for it; the default is "key",
// CommandService's.
func WithKeyField(name string) Option {
	return func(r *Results) { r.keyField = name }
}

// NewResults returns Results reading from db, the projection of the
// domain's topic. A read with a consistency token waits at most maxWait (and
// at most its context's deadline) for the token's write to be applied.
func NewResults(db Querier, topic string, maxWait time.Duration, opts ...Option) *Results {
	r := &Results{db: db, topic: topic, maxWait: maxWait, eventID: envelope.EventID, keyField: "key"}
	for _, o := range opts {
		o(r)
	}
	return r
}

// Ref names a command: by RequestID or by EventID (exactly one), within the
// aggregate Key when given, with the consistency Token its command RPC
// returned, if any.
type Ref struct {
	// RequestID is the client's idempotency key the command was sent with.
	RequestID string
	// EventID is the event ID the command RPC returned, a UUID in text form.
	EventID string
	// Key is the aggregate the command was for (the record key); "" for
	// any. A request ID used for several aggregates names several commands,
	// and then Key must say which.
	Key string
	// Token is the command's consistency token, or any other; "" for none.
	// Get first waits until the write it names is applied. The command's own
	// token tells apart commands that reused one request ID (CONFLICT), and a
	// command never written (UNKNOWN) or pruned (EXPIRED) from one pending.
	Token string
}

// Outcome is what became of a command.
type Outcome struct {
	// EventID is the command's event ID.
	EventID uuid.UUID
	Status  commandv1.CommandStatus
	// Reason says why the command was rejected, quarantined, parked,
	// dropped, in conflict or expired, or what a pending or unknown status
	// cannot tell; empty otherwise.
	Reason string
	// Key is the aggregate the command was for, once the applier decided it;
	// otherwise Ref.Key.
	Key string
	// Result is the domain's result, as its handler recorded it when it
	// decided the command (APPLIED or REJECTED): nil otherwise, and nil or
	// empty for none (or an empty message).
	Result []byte
	// Message is Result unmarshaled into the domain's result type, for an
	// APPLIED or REJECTED command when the domain declared one
	// (WithResultType); nil otherwise.
	Message proto.Message
}

// decided reports whether the domain decided the command: only then did it
// record a result.
func (o *Outcome) decided() bool {
	return o.Status == commandv1.CommandStatus_COMMAND_STATUS_APPLIED || o.Status == commandv1.CommandStatus_COMMAND_STATUS_REJECTED
}

// Get reads what became of the command ref names. With ref.Token it first
// waits for the token's write to be applied (Await). It answers:
//   - CONFLICT, with the reason, when the token names a command that reused
//     the request ID of an earlier one of its aggregate with other content
//     (both share the event ID: only the token tells them apart, and without
//     it the earlier one is answered), or PARKED or QUARANTINED saying so for
//     such a command still in the quarantine;
//   - its outcome (APPLIED, REJECTED with the reason, DROPPED) once recorded,
//     with the domain's result;
//   - QUARANTINED, PARKED or DROPPED, with the reason, when the quarantine
//     holds it;
//   - otherwise PENDING or, when the token is given (and applied), EXPIRED
//     when the record at the token is the command's and retention pruned its
//     outcome (see WithRecordReader), else UNKNOWN: never written at or before
//     the token.
//
// Errors are *connect.Error: invalid_argument for a ref that names no
// command or a malformed one, for a request ID that names several commands
// (one for each of several aggregates) without Key, listing the keys, and for
// a token malformed or not pointing into the topic (see WithTopicEnds);
// unavailable when the token's write is not applied within maxWait or the
// database cannot be read; internal when the recorded result is not of the
// declared result type.
func (r *Results) Get(ctx context.Context, ref Ref) (*Outcome, error) {
	id, named, err := r.resolve(ref)
	if err != nil {
		return nil, err
	}
	tok, err := r.Await(ctx, ref.Token)
	if err != nil {
		return nil, err
	}
	if reused, err := r.reusedAt(ctx, tok, id, ref.Key); err != nil || reused != nil {
		return reused, err
	}
	out := &Outcome{EventID: id, Status: commandv1.CommandStatus_COMMAND_STATUS_PENDING, Key: ref.Key}
	rows, err := dedup.Results(ctx, r.db, id)
	if err != nil {
		return nil, readError(err)
	}
	var found []dedup.Row
	for _, row := range rows {
		if ref.Key == "" || row.Key == ref.Key || row.Key == "" { // "": recorded before rows named their key
			found = append(found, row)
		}
	}
	switch {
	case len(found) > 1:
		keys := make([]string, len(found))
		for i, row := range found {
			keys[i] = row.Key
		}
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(
			"this %s names %d commands, one for each of the keys %s: give %s to say which", named, len(found), strings.Join(keys, ", "), r.keyField))
	case len(found) == 1:
		return out, r.recorded(out, found[0])
	}
	if err := r.quarantined(ctx, out, tok); err != nil {
		return nil, err
	}
	return out, nil
}

// resolve returns the event ID ref names and which field named it.
func (r *Results) resolve(ref Ref) (uuid.UUID, string, error) {
	switch {
	case ref.RequestID != "" && ref.EventID != "":
		return uuid.Nil, "", connect.NewError(connect.CodeInvalidArgument, errors.New("give request_id or event_id, not both"))
	case ref.RequestID != "":
		return r.eventID(ref.RequestID), "request_id", nil
	case ref.EventID != "":
		id, err := uuid.Parse(ref.EventID)
		if err != nil {
			return uuid.Nil, "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("event_id %q is not a UUID: %w", ref.EventID, err))
		}
		return id, "event_id", nil
	}
	return uuid.Nil, "", connect.NewError(connect.CodeInvalidArgument, errors.New("give request_id or event_id to name the command"))
}

// recorded fills in out from the processed-event row of its command.
func (r *Results) recorded(out *Outcome, row dedup.Row) error {
	out.Status, out.Reason = commandv1.CommandStatus(row.Outcome), row.Reason
	if row.Key != "" {
		out.Key = row.Key
	}
	if !out.decided() {
		return nil
	}
	out.Result = row.Result
	if r.result == nil {
		return nil
	}
	m := r.result.ProtoReflect().New().Interface()
	if err := proto.Unmarshal(row.Result, m); err != nil {
		return connect.NewError(connect.CodeInternal, fmt.Errorf("the recorded result of event %s is not a %s: %s",
			out.EventID, m.ProtoReflect().Descriptor().FullName(), applier.ProtoError(err)))
	}
	out.Message = m
	return nil
}

// quarantined fills in out for a command with no processed-event row: from
// the quarantine, or else as notFound says.
func (r *Results) quarantined(ctx context.Context, out *Outcome, tok *consistency.Token) error {
	outcome, reason, err := applier.QuarantineOutcome(ctx, r.db, r.topic, out.EventID, out.Key)
	if err != nil {
		return readError(err)
	}
	switch outcome {
	case applier.OutcomeQuarantined:
		out.Status, out.Reason = commandv1.CommandStatus_COMMAND_STATUS_QUARANTINED, reason
	case applier.OutcomeParked:
		out.Status, out.Reason = commandv1.CommandStatus_COMMAND_STATUS_PARKED, reason
	case applier.OutcomeDropped:
		out.Status, out.Reason = commandv1.CommandStatus_COMMAND_STATUS_DROPPED, reason
	case applier.NotQuarantined:
		return r.notFound(ctx, out, tok)
	}
	return nil
}

// Await waits until the write named by token is applied, bounded by maxWait
// (and ctx), and returns the token parsed; nil, with no error, for no token
// (""). A domain's read queries call it before reading, for read-your-writes.
// Errors are *connect.Error: invalid_argument for a malformed token or one
// that does not point into the topic (see WithTopicEnds), unavailable when
// the write is not applied in time or the database cannot be read.
func (r *Results) Await(ctx context.Context, token string) (*consistency.Token, error) {
	if token == "" {
		return nil, nil
	}
	t, err := consistency.Parse(token)
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	ctx, cancel := context.WithTimeout(ctx, r.maxWait)
	defer cancel()
	if err := consistency.WaitWithin(ctx, r.db, r.topic, t, r.ends); err != nil {
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

// readError is a failed read of the projection, for a caller to retry.
func readError(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read from database: %w", err))
}
