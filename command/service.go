package command

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/anypb"

	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	"github.com/heed-dev/heed/gen/heed/command/v1/commandv1connect"
)

// Service implements heed.command.v1.CommandService over Results. Mount it
// with commandv1connect.NewCommandServiceHandler and handler options that
// enforce the schema's protovalidate rules (ingest.HandlerOptions). It is
// safe for concurrent use.
type Service struct {
	results *Results
}

var _ commandv1connect.CommandServiceHandler = (*Service)(nil)

// NewService returns a Service answering from results.
func NewService(results *Results) *Service {
	return &Service{results: results}
}

// typeURLPrefix is what anypb.New puts before a message's full name.
const typeURLPrefix = "type.googleapis.com/"

// GetCommandResult answers Results.Get for the command the request names,
// with the domain's result as an Any of the declared result type
// (WithResultType) once the domain decided the command. Errors are Get's.
func (s *Service) GetCommandResult(ctx context.Context, req *connect.Request[commandv1.GetCommandResultRequest]) (*connect.Response[commandv1.GetCommandResultResponse], error) {
	m := req.Msg
	ref := Ref{Key: m.GetKey(), Token: m.GetConsistencyToken()}
	switch r := m.GetRef().(type) {
	case *commandv1.GetCommandResultRequest_RequestId:
		ref.RequestID = r.RequestId
	case *commandv1.GetCommandResultRequest_EventId:
		ref.EventID = r.EventId
	}
	o, err := s.results.Get(ctx, ref)
	if err != nil {
		return nil, err
	}
	out := &commandv1.GetCommandResultResponse{EventId: o.EventID.String(), Status: o.Status, Reason: o.Reason, Key: o.Key}
	if o.Message != nil {
		// The recorded bytes as they are: Get checked that they are one.
		out.Result = &anypb.Any{TypeUrl: typeURLPrefix + string(o.Message.ProtoReflect().Descriptor().FullName()), Value: o.Result}
	}
	return connect.NewResponse(out), nil
}
