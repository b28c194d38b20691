package heed

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/command"
	"github.com/heed-dev/heed/consistency"
)

// Publisher writes a command's event to the domain's topic, keyed by its
// aggregate, and returns once the broker acknowledged it: the event ID (the
// request ID's, in the domain's space) and a consistency token a read can
// wait for. A retry with the same request ID writes the same event ID, which
// the applier recognises. Its errors are *connect.Error, to be returned to
// the caller as they are. It is safe for concurrent use.
type Publisher interface {
	Publish(ctx context.Context, key, requestID string, event proto.Message) (eventID, token string, err error)
}

// Env is what a domain's services get from heed serve (and dev).
type Env struct {
	// Publisher writes commands' events (see Publisher).
	Publisher Publisher
	// Pool reads the domain's projection; its search_path is the domain's
	// schema. Services must only read through it: state changes go through
	// events.
	Pool *pgxpool.Pool
	// Topic is the domain's event topic.
	Topic string
	// ReadWaitMax bounds how long a read waits for its consistency token
	// (--read-wait-max).
	ReadWaitMax time.Duration
	// Ends, when set, lets Await refuse at once a token that no write to the
	// topic returned.
	Ends *consistency.Ends
	// Results reads what became of a command (by request or event ID, with
	// its consistency token): what heed.command.v1.CommandService answers,
	// for a domain's own typed GetCommandResult.
	Results *command.Results
	// Options are the Connect handler options every service must be built
	// with (validation, limits, metrics, tracing):
	// pkgv1connect.NewXServiceHandler(svc, env.Options...).
	Options []connect.HandlerOption
	// ReadRecord reads the key and value of the topic's record at partition
	// and offset (GetCommandResult reads one to tell a command whose outcome
	// retention pruned). Nil when the server cannot read the topic.
	ReadRecord func(ctx context.Context, partition int32, offset int64) (key, value []byte, err error)
}

// Await waits until the write that returned token is applied, at most
// ReadWaitMax and ctx's deadline, so that a read after it sees it
// (read-your-writes). An empty token returns at once. Errors are
// *connect.Error: invalid_argument for a malformed token or one outside the
// topic, unavailable when the write is not applied in time.
func (e *Env) Await(ctx context.Context, token string) error {
	if e.Results == nil {
		return connect.NewError(connect.CodeInternal, errors.New("heed.Env has no Results: build services through cli (serve, dev) or set Env.Results"))
	}
	_, err := e.Results.Await(ctx, token)
	return err
}

// ReadError is the error a read query returns when the database failed:
// unavailable, so that clients retry.
func ReadError(err error) error {
	return connect.NewError(connect.CodeUnavailable, fmt.Errorf("read from database: %w", err))
}

// Service is one Connect service a domain mounts on heed's server: its fully
// qualified name, the path prefix and the handler that
// pkgv1connect.NewXServiceHandler returned.
type Service struct {
	Name    string
	Path    string
	Handler http.Handler
}

// ServiceFunc builds a domain's services when the server starts.
type ServiceFunc func(env *Env) ([]Service, error)

// Serve adds the domain's Connect services, built by f when heed serve (or
// dev) starts: its commands, which publish events through env.Publisher, and
// its read queries, which read env.Pool (after env.Await for
// read-your-writes). Every domain also gets heed.command.v1.CommandService
// (GetCommandResult) without writing it.
func Serve(d *Domain, f ServiceFunc) {
	d.services = append(d.services, f)
}

// Services builds the domain's services for env.
func (d *Domain) Services(env *Env) ([]Service, error) {
	var out []Service
	for _, f := range d.services {
		s, err := f(env)
		if err != nil {
			return nil, fmt.Errorf("domain %s: %w", d.name, err)
		}
		out = append(out, s...)
	}
	return out, nil
}

// ResultType is the message type of a domain's command results: what
// GetCommandResult unmarshals a recorded result into (as a
// google.protobuf.Any). Set it with Results.
type ResultType = proto.Message

// Results declares the message type of the domain's command results (the
// Data its handlers return, see Applied): GetCommandResult returns them typed.
func Results(m proto.Message) Option { return func(d *Domain) { d.result = m } }

// ResultMessage is the domain's result type (nil: undeclared).
func (d *Domain) ResultMessage() proto.Message { return d.result }
