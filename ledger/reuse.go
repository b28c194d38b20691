package ledger

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// reusedAt answers for a command that reused the request ID of an earlier
// command of its account with other content. Both share the event ID, so a
// request ID or an event ID names the earlier one; only the consistency token
// tells them apart, by naming the record. When t (applied, as await
// checked) names a record of the quarantine with event ID id (and key
// account, if given), reusedAt answers:
//   - CONFLICT with the reason, for a record found to be a conflict;
//   - PARKED or QUARANTINED with the reason, for a record still open there
//     whose content differs from the command recorded as processed with id:
//     it becomes a conflict once re-driven.
//
// It returns nil, for the earlier command's outcome to be answered, when
// t is nil or names any other record, a retry with the same content
// included.
func (s *Service) reusedAt(ctx context.Context, t *consistency.Token, id uuid.UUID, account string) (*connect.Response[ledgerv1.GetCommandResultResponse], error) {
	if t == nil {
		return nil, nil
	}
	rec, err := applier.GetQuarantined(ctx, s.pool, s.topic, t.Partition, t.Offset)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, readError(err)
	case rec.EventID == nil || *rec.EventID != id || (account != "" && string(rec.Key) != account):
		return nil, nil
	}
	out := &ledgerv1.GetCommandResultResponse{EventId: id.String(), AccountId: string(rec.Key)}
	switch {
	case rec.Kind == "conflict":
		out.Status = ledgerv1.CommandStatus_COMMAND_STATUS_CONFLICT
		out.Reason = rec.Reason + "; this command never applies (the first one's outcome is answered with its own consistency_token, or with none)"
	case rec.State == "open":
		reused, err := s.differsFromProcessed(ctx, id, rec)
		if err != nil || !reused {
			return nil, err
		}
		out.Status = ledgerv1.CommandStatus_COMMAND_STATUS_PARKED
		if rec.Kind == "poison" {
			out.Status = ledgerv1.CommandStatus_COMMAND_STATUS_QUARANTINED
		}
		out.Reason = rec.Reason + "; and it reuses the request_id of an earlier command with other content: once re-driven it is a conflict, and never applies"
	default:
		return nil, nil
	}
	return connect.NewResponse(out), nil
}

// differsFromProcessed reports whether the content of rec (a record with
// event ID id) differs from that of the command recorded as processed with id
// under rec's key; false when none is, or rec holds no envelope.
func (s *Service) differsFromProcessed(ctx context.Context, id uuid.UUID, rec applier.QuarantinedRecord) (bool, error) {
	var env envelopev1.Envelope
	if proto.Unmarshal(rec.Value, &env) != nil {
		return false, nil
	}
	rows, err := dedup.Results(ctx, s.pool, id)
	if err != nil {
		return false, readError(err)
	}
	for _, r := range rows {
		if r.Key == string(rec.Key) || r.Key == "" { // "": recorded before rows named their account
			return r.Fingerprint != envelope.Fingerprint(&env), nil
		}
	}
	return false, nil
}
