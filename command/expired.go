package command

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
)

// RecordReader reads the record at partition/offset of the domain's topic:
// its key and value. It must be safe for concurrent use.
type RecordReader func(ctx context.Context, partition int32, offset int64) (key, value []byte, err error)

// WithRecordReader lets Get tell a command whose outcome retention pruned
// (COMMAND_STATUS_EXPIRED) from one never written at its consistency token
// (COMMAND_STATUS_UNKNOWN), by reading the one record at the token. Without
// it, such a command reads UNKNOWN.
func WithRecordReader(rr RecordReader) Option {
	return func(r *Results) { r.readRecord = rr }
}

// unknownReason is an UNKNOWN command's reason.
const unknownReason = "no command with this ID was applied, rejected, quarantined or parked at or before the consistency token's position: " +
	"if the token is the command's own, the command was never written"

// notFound fills in out for a command of which neither the processed events
// nor the quarantine know anything: with a consistency token (whose position
// is applied), expired when the record at the token is the command's and
// retention pruned, else unknown; without one, pending.
func (r *Results) notFound(ctx context.Context, out *Outcome, tok *consistency.Token) error {
	pr, err := r.pruned(ctx)
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
		expired, err := r.expired(ctx, *tok, out.EventID, out.Key)
		if err != nil {
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read the record at the consistency token: %w", err))
		}
		if expired {
			out.Status, out.Reason = commandv1.CommandStatus_COMMAND_STATUS_EXPIRED, pr.expiredReason()
			return nil
		}
	}
	out.Status, out.Reason = commandv1.CommandStatus_COMMAND_STATUS_UNKNOWN, unknownReason
	return nil
}

// pruned is what retention did to the projection: the cutoff before which
// processed events are gone and the dedup window; ok is false when it never
// pruned.
type pruned struct {
	cutoff time.Time
	window time.Duration
	ok     bool
}

func (r *Results) pruned(ctx context.Context) (pruned, error) {
	var p pruned
	err := r.db.QueryRow(ctx, `SELECT cutoff FROM heed_retention`).Scan(&p.cutoff)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return p, fmt.Errorf("read the retention cutoff: %w", err)
	}
	if p.window, _, err = applier.RecordedWindow(ctx, r.db); err != nil {
		return p, err
	}
	p.ok = true
	return p, nil
}

// expiredReason says why a command's outcome is gone.
func (p pruned) expiredReason() string {
	return fmt.Sprintf("this command was decided (its record at the consistency token is applied), and its outcome is no longer kept: "+
		"processed events older than the dedup window (%s, heed apply --retention) before the records applied since are pruned, up to %s; "+
		"a retry of it now is a new command", p.window, p.cutoff.UTC().Format(time.RFC3339))
}

// pendingReason is a pending command's reason once retention has pruned.
func (p pruned) pendingReason() string {
	return fmt.Sprintf("not applied yet, or decided before %s and its outcome pruned (kept for the dedup window, %s): "+
		"pass the command's consistency token to tell", p.cutoff.UTC().Format(time.RFC3339), p.window)
}

// expired reports whether the command id (of key, if not "") was written at
// tok, which is applied, so that finding neither its outcome nor a
// quarantine entry means retention pruned it. It is false, with no error,
// when it cannot tell for certain.
func (r *Results) expired(ctx context.Context, tok consistency.Token, id uuid.UUID, key string) (bool, error) {
	if r.readRecord == nil {
		return false, nil
	}
	recKey, value, err := r.readRecord(ctx, tok.Partition, tok.Offset)
	if err != nil {
		return false, err
	}
	var env envelopev1.Envelope
	if proto.Unmarshal(value, &env) != nil || env.GetEventId() != id.String() {
		return false, nil
	}
	return key == "" || string(recKey) == key, nil
}
