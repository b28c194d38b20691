package command

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// reusedAt answers for a command that reused the request ID of an earlier
// command of its aggregate with other content. Both share the event ID, so a
// request ID or an event ID names the earlier one; only the consistency token
// tells them apart, by naming the record. When t (applied, as Await
// checked) names a record of the quarantine with event ID id (and key key, if
// given), reusedAt answers:
//   - CONFLICT with the reason, for a record found to be a conflict;
//   - PARKED or QUARANTINED with the reason, for a record still open there
//     whose content differs from the command recorded as processed with id:
//     it becomes a conflict once re-driven.
//
// It returns nil, for the earlier command's outcome to be answered, when
// t is nil or names any other record, a retry with the same content
// included.
func (r *Results) reusedAt(ctx context.Context, t *consistency.Token, id uuid.UUID, key string) (*Outcome, error) {
	if t == nil {
		return nil, nil
	}
	rec, err := applier.GetQuarantined(ctx, r.db, r.topic, t.Partition, t.Offset)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, nil
	case err != nil:
		return nil, readError(err)
	case rec.EventID == nil || *rec.EventID != id || (key != "" && string(rec.Key) != key):
		return nil, nil
	}
	out := &Outcome{EventID: id, Key: string(rec.Key)}
	switch {
	case rec.Kind == "conflict":
		out.Status = commandv1.CommandStatus_COMMAND_STATUS_CONFLICT
		out.Reason = rec.Reason + "; this command never applies (the first one's outcome is answered with its own consistency_token, or with none)"
	case rec.State == "open":
		reused, err := r.differsFromProcessed(ctx, id, rec)
		if err != nil || !reused {
			return nil, err
		}
		out.Status = commandv1.CommandStatus_COMMAND_STATUS_PARKED
		if rec.Kind == "poison" {
			out.Status = commandv1.CommandStatus_COMMAND_STATUS_QUARANTINED
		}
		out.Reason = rec.Reason + "; and it reuses the request_id of an earlier command with other content: once re-driven it is a conflict, and never applies"
	default:
		return nil, nil
	}
	return out, nil
}

// differsFromProcessed reports whether the content of rec (a record with
// event ID id) differs from that of the command recorded as processed with id
// under rec's key; false when none is, or rec holds no envelope.
func (r *Results) differsFromProcessed(ctx context.Context, id uuid.UUID, rec applier.QuarantinedRecord) (bool, error) {
	var env envelopev1.Envelope
	if proto.Unmarshal(rec.Value, &env) != nil {
		return false, nil
	}
	rows, err := dedup.Results(ctx, r.db, id)
	if err != nil {
		return false, readError(err)
	}
	for _, row := range rows {
		if row.Key == string(rec.Key) || row.Key == "" { // "": recorded before rows named their key
			return row.Fingerprint != envelope.Fingerprint(&env), nil
		}
	}
	return false, nil
}
