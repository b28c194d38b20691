package ledger_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/heed-dev/heed/consistency"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
)

// A consistency token that no write to the topic returned (past its
// partition's end, or of a partition the topic does not have) is refused at
// once with invalid_argument, though reads may wait an hour for a token; a
// token issued after the server last read the topic's end is waited for.
func TestForeignTokenRefused(t *testing.T) {
	p := newPipeline(t, pipelineOpts{partitions: 2, readWaitMax: time.Hour})
	open := token(t, p.open(t, "open-kim", "kim").GetConsistencyToken())
	end := p.endOffsets(t)[open.Partition]
	// Each read gets a deadline far below the hour: waiting for the token
	// would fail the test with deadline_exceeded.
	read := func(tok consistency.Token) error {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, err := p.client.GetAccount(ctx, connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: "kim", ConsistencyToken: tok.String()}))
		return err
	}
	cases := []struct {
		name string
		tok  consistency.Token
		want string
	}{
		{"far past the end", consistency.Token{Partition: open.Partition, Offset: 1_000_000}, "past the topic's end"},
		{"at the end", consistency.Token{Partition: open.Partition, Offset: end}, "past the topic's end"},
		{"of an empty partition", consistency.Token{Partition: 1 - open.Partition, Offset: 0}, "past the topic's end"},
		{"of a partition the topic has not", consistency.Token{Partition: 2, Offset: 0}, "which the topic does not have"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := read(c.tok)
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("GetAccount with token %+v: %v (code %v), want invalid_argument", c.tok, err, connect.CodeOf(err))
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "not issued by this heed's topic") {
				t.Errorf("error %q does not say %q and that the token was not issued by this topic", err, c.want)
			}
		})
	}
	t.Run("GetCommandResult", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, err := p.client.GetCommandResult(ctx, connect.NewRequest(&ledgerv1.GetCommandResultRequest{
			Ref:              &ledgerv1.GetCommandResultRequest_RequestId{RequestId: "open-kim"},
			ConsistencyToken: consistency.Token{Partition: open.Partition, Offset: end + 5}.String(),
		}))
		if connect.CodeOf(err) != connect.CodeInvalidArgument {
			t.Fatalf("GetCommandResult with a token past the end: %v, want invalid_argument", err)
		}
	})

	// A token the server has not seen the end of yet (it read the ends
	// above) is genuine: the read waits until the applier applies it.
	dep := token(t, p.deposit(t, "dep-kim", "kim", 3).GetConsistencyToken())
	if dep.Partition != open.Partition || dep.Offset < end {
		t.Fatalf("deposit at %+v, want it at or past the end %d read before", dep, end)
	}
	got := make(chan error, 1)
	go func() { got <- read(dep) }()
	p.startApplier(t)
	if err := <-got; err != nil {
		t.Errorf("GetAccount with the deposit's token: %v", err)
	}
}
