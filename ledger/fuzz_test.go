package ledger_test

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	envelopev1 "github.com/heed-dev/heed/gen/heed/envelope/v1"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/ledger"
)

// accountPattern is ledger.proto's account_id rule, the oracle of the fuzz
// targets.
var accountPattern = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// storable reports whether s is text Postgres can store: UTF-8 without NUL.
func storable(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// command is a request a command RPC (or GetCommandResult) takes, with the
// fields the fuzz target sets.
type command interface {
	proto.Message
	GetRequestId() string
}

// commands returns fresh requests of every RPC that takes a request_id.
func commands() []command {
	return []command{
		new(ledgerv1.OpenAccountRequest), new(ledgerv1.DepositRequest),
		new(ledgerv1.WithdrawRequest), new(ledgerv1.GetCommandResultRequest),
	}
}

// wireCommand is the protobuf encoding of request_id (1), account_id (2) and
// amount (3), written field by field as any client may: no UTF-8 check.
func wireCommand(requestID, accountID string, amount int64) []byte {
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	b = protowire.AppendString(b, requestID)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, accountID)
	b = protowire.AppendTag(b, 3, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(amount))
}

// jsonCommand is the JSON a Connect client sends for the same fields.
func jsonCommand(requestID, accountID string, amount int64) []byte {
	b, _ := json.Marshal(map[string]string{"request_id": requestID, "account_id": accountID, "amount": strconv.FormatInt(amount, 10)})
	return b
}

// FuzzCommandValidation sends request_id, account_id and amount through what
// happens to a request before its handler runs: decoding (protobuf binary, as
// gRPC and Connect send it, and JSON, as connect-go decodes it) and the
// schema's protovalidate rules (validate.NewInterceptor uses
// protovalidate.GlobalValidator). Whatever passes holds a request_id of 1-128
// characters and an account_id matching ledger.proto's pattern, both text
// Postgres can store, and an amount above zero.
func FuzzCommandValidation(f *testing.F) {
	f.Add("deposit-1", "alice", int64(500))
	f.Add("d\x00x", "alice", int64(1))
	f.Add("\x00", "a", int64(1))
	f.Add("", "a", int64(1))
	f.Add(strings.Repeat("x", 128), strings.Repeat("a", 64), int64(1))
	f.Add(strings.Repeat("é", 128), strings.Repeat("a", 65), int64(1))
	f.Add("r", "no spaces", int64(1))
	f.Add("r", "acct-1\x00", int64(1))
	f.Add("r", "a\n", int64(1))
	f.Add("r", "a", int64(0))
	f.Add("r", "a", int64(-5))
	f.Add("\xff\xfe", "a", int64(1))
	f.Add("日本", "日本", int64(1))
	f.Fuzz(func(t *testing.T, requestID, accountID string, amount int64) {
		decoders := map[string]struct {
			body   []byte
			decode func([]byte, proto.Message) error
		}{
			"binary": {wireCommand(requestID, accountID, amount), proto.Unmarshal},
			"JSON":   {jsonCommand(requestID, accountID, amount), protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal},
		}
		for codec, d := range decoders {
			for _, msg := range commands() {
				if err := d.decode(d.body, msg); err != nil {
					continue // refused before validation
				}
				if err := protovalidate.GlobalValidator.Validate(msg); err != nil {
					continue
				}
				name := string(msg.ProtoReflect().Descriptor().Name())
				id := msg.GetRequestId()
				if n := utf8.RuneCountInString(id); !storable(id) || n < 1 || n > 128 {
					t.Errorf("%s (%s) accepted request_id %q", name, codec, id)
				}
				_, optional := msg.(*ledgerv1.GetCommandResultRequest) // its account_id may be left out
				if m, ok := msg.(interface{ GetAccountId() string }); ok && !(optional && m.GetAccountId() == "") &&
					(!accountPattern.MatchString(m.GetAccountId()) || !storable(m.GetAccountId())) {
					t.Errorf("%s (%s) accepted account_id %q", name, codec, m.GetAccountId())
				}
				if m, ok := msg.(interface{ GetAmount() int64 }); ok && m.GetAmount() <= 0 {
					t.Errorf("%s (%s) accepted amount %d", name, codec, m.GetAmount())
				}
			}
		}
	})
}

// keyAccount returns the account an event is keyed by and, for a transfer's
// step, the other account.
func keyAccount(t *testing.T, msg proto.Message) (string, *string) {
	t.Helper()
	switch m := msg.(type) {
	case interface{ GetAccountId() string }:
		return m.GetAccountId(), nil
	case *ledgerv1.TransferDebited:
		to := m.GetToAccountId()
		return m.GetFromAccountId(), &to
	case *ledgerv1.TransferCredited:
		from := m.GetFromAccountId()
		return m.GetToAccountId(), &from
	case *ledgerv1.TransferRefunded:
		to := m.GetToAccountId()
		return m.GetFromAccountId(), &to
	}
	t.Fatalf("Decode returned a %T", msg)
	return "", nil
}

// FuzzApplierDecode feeds ledger.Applier.Decode envelopes of any type,
// aggregate and payload bytes. It never panics; it refuses with a reason that
// is text Postgres can store, or returns the event of the envelope's type, for
// the aggregate, with a valid account_id (a transfer's step: keyed by its
// account, the other one valid and another) and (for funds) an amount above
// zero.
func FuzzApplierDecode(f *testing.F) {
	payload := func(m proto.Message) []byte {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	f.Add("heed.ledger.v1.AccountOpened", "alice", payload(&ledgerv1.AccountOpened{AccountId: "alice"}))
	f.Add("heed.ledger.v1.FundsDeposited", "alice", payload(&ledgerv1.FundsDeposited{AccountId: "alice", Amount: 5}))
	f.Add("heed.ledger.v1.FundsWithdrawn", "alice", payload(&ledgerv1.FundsWithdrawn{AccountId: "alice", Amount: 7}))
	f.Add("heed.ledger.v1.FundsWithdrawn", "alice", payload(&ledgerv1.FundsWithdrawn{AccountId: "alice", Amount: -7}))
	f.Add("heed.ledger.v1.FundsDeposited", "bob", payload(&ledgerv1.FundsDeposited{AccountId: "alice", Amount: 5}))
	f.Add("heed.ledger.v1.AccountOpened", "a\x00", payload(&ledgerv1.AccountOpened{AccountId: "a\x00"}))
	f.Add("heed.ledger.v1.TransferDebited", "alice", payload(&ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "bob", Amount: 3}))
	f.Add("heed.ledger.v1.TransferDebited", "alice", payload(&ledgerv1.TransferDebited{FromAccountId: "alice", ToAccountId: "alice", Amount: 3}))
	f.Add("heed.ledger.v1.TransferCredited", "bob", payload(&ledgerv1.TransferCredited{FromAccountId: "alice", ToAccountId: "bob", Amount: 3}))
	f.Add("heed.ledger.v1.TransferRefunded", "bob", payload(&ledgerv1.TransferRefunded{FromAccountId: "alice", ToAccountId: "bob", Amount: 3}))
	f.Add("heed.ledger.v1.Bogus", "alice", []byte{})
	f.Add("heed.ledger.v1.AccountOpened", "alice", []byte("\x0a\x02\xff\xfe"))
	f.Fuzz(func(t *testing.T, typ, aggregateID string, value []byte) {
		env := &envelopev1.Envelope{
			Type: typ, AggregateId: aggregateID,
			Payload: &anypb.Any{TypeUrl: "type.googleapis.com/" + typ, Value: value},
		}
		got, err := ledger.Applier{}.Decode(env)
		if err != nil {
			if err.Error() == "" || !storable(err.Error()) {
				t.Fatalf("Decode refused with reason %q, which Postgres text cannot store", err)
			}
			return
		}
		msg, ok := got.(proto.Message)
		if !ok {
			t.Fatalf("Decode returned %T", got)
		}
		if name := string(msg.ProtoReflect().Descriptor().FullName()); name != typ {
			t.Errorf("Decode of a %s returned a %s", typ, name)
		}
		id, other := keyAccount(t, msg)
		if id != aggregateID || !accountPattern.MatchString(id) {
			t.Errorf("Decode accepted account_id %q for aggregate %q", id, aggregateID)
		}
		if other != nil && (*other == id || !accountPattern.MatchString(*other)) {
			t.Errorf("Decode accepted a transfer between %q and %q", id, *other)
		}
		if m, ok := got.(interface{ GetAmount() int64 }); ok && m.GetAmount() <= 0 {
			t.Errorf("Decode accepted amount %d", m.GetAmount())
		}
	})
}
