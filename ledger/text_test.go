package ledger_test

import (
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
)

// A request_id Postgres text cannot store (it holds a NUL) is refused by every
// RPC that takes one, with invalid_argument naming the field, over Connect
// (binary and JSON, where a client writes it as "\u0000") and gRPC; nothing is
// produced.
func TestRequestIDWithNULRefused(t *testing.T) {
	p := newPipeline(t, pipelineOpts{})
	jsonClient := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, p.baseURL, connect.WithProtoJSON())
	const nul = "d\x00x"
	cases := []struct {
		name string
		call func() error
	}{
		{"OpenAccount", func() error {
			_, err := p.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: nul, AccountId: "a"}))
			return err
		}},
		{"Deposit as JSON", func() error {
			_, err := jsonClient.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: nul, AccountId: "a", Amount: 1}))
			return err
		}},
		{"Withdraw over gRPC", func() error {
			_, err := p.grpc.Withdraw(t.Context(), connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: nul, AccountId: "a", Amount: 1}))
			return err
		}},
		{"only a NUL", func() error {
			_, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "\x00", AccountId: "a", Amount: 1}))
			return err
		}},
		{"GetCommandResult", func() error {
			_, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
				Ref: &ledgerv1.GetCommandResultRequest_RequestId{RequestId: nul}}))
			return err
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.call()
			if connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Fatalf("got %v (code %v), want invalid_argument", err, connect.CodeOf(err))
			}
			if !strings.Contains(err.Error(), "request_id") || !strings.Contains(err.Error(), "NUL") {
				t.Errorf("error %q does not name request_id and the NUL", err)
			}
		})
	}
	for part, end := range p.endOffsets(t) {
		if end != 0 {
			t.Errorf("partition %d end offset %d after refused commands, want 0", part, end)
		}
	}
}
