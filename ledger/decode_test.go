package ledger_test

import (
	"regexp"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// TestDecodeAccountIDRule checks that Decode accepts exactly the account IDs
// ledger.proto's pattern accepts (the regexp is the oracle), so that a record
// written around ingest with an ID the command side would refuse is poison.
func TestDecodeAccountIDRule(t *testing.T) {
	pattern := regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`) // ledger.proto's account_id rule
	for _, id := range []string{
		"acct-1", "A.b_c-9", strings.Repeat("x", 64), strings.Repeat("x", 65), "", "a b", "a/b", "a\n", "\na",
		"é", "日本", "acct-1\x00", "a+b", "a:b", "Z", "0", "_", ".", "-", "a@b", "a\tb",
	} {
		value, err := proto.Marshal(&ledgerv1.AccountOpened{AccountId: id})
		if err != nil {
			t.Fatal(err)
		}
		env := &envelopev1.Envelope{
			Type:        "heed.ledger.v1.AccountOpened",
			AggregateId: id,
			Payload:     &anypb.Any{TypeUrl: "type.googleapis.com/heed.ledger.v1.AccountOpened", Value: value},
		}
		_, err = ledger.Applier{}.Decode(env)
		if want := pattern.MatchString(id); (err == nil) != want {
			t.Errorf("Decode(account_id %q): error %v; the pattern says valid=%v", id, err, want)
		}
	}
}
