package command_test

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/heed-dev/heed/command"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	"github.com/heed-dev/heed/gen/heed/command/v1/commandv1connect"
	"github.com/heed-dev/heed/ingest"
)

// A domain whose handler records an Int64Value as each command's result
// serves CommandService over its projection.
func ExampleNewService() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/heed?search_path=heed")
	if err != nil {
		panic(err)
	}
	results := command.NewResults(pool, "heed.tally", 10*time.Second, command.WithResultType(&wrapperspb.Int64Value{}))
	mux := http.NewServeMux()
	mux.Handle(commandv1connect.NewCommandServiceHandler(command.NewService(results), ingest.HandlerOptions()...))
	_ = http.ListenAndServe("127.0.0.1:8080", mux)
}

// Get reads a command's outcome in Go, here by the request ID a client sent
// it with, within its aggregate, after waiting for its consistency token.
func ExampleResults_Get() {
	var results *command.Results // command.NewResults(...)
	o, err := results.Get(context.Background(), command.Ref{RequestID: "add-2", Key: "a", Token: "AQUC"})
	if err != nil {
		fmt.Println(connect.CodeOf(err), err)
		return
	}
	if o.Status == commandv1.CommandStatus_COMMAND_STATUS_APPLIED {
		fmt.Println("tally after:", o.Message.(*wrapperspb.Int64Value).GetValue())
	}
}

// A domain's own read query waits for the caller's consistency token before
// it reads, so that a client reads its own write.
func ExampleResults_Await() {
	var (
		results *command.Results // command.NewResults(...)
		pool    *pgxpool.Pool
	)
	read := func(ctx context.Context, key, token string) (int64, error) {
		if _, err := results.Await(ctx, token); err != nil {
			return 0, err // a *connect.Error: return it as it is
		}
		var n int64
		err := pool.QueryRow(ctx, `SELECT n FROM tallies WHERE key = $1`, key).Scan(&n)
		return n, err
	}
	_, _ = read(context.Background(), "a", "AQUC")
}
