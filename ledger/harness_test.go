package ledger_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/consistency"
	"github.com/heed-dev/heed/dedup"
	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
	"github.com/heed-dev/heed/ledger"
	"github.com/heed-dev/heed/outbox"
	"github.com/heed-dev/heed/schema"
)

// testSchema is the schema the harness migrates into: the default, as in
// production, so that triggers a test installs land next to the tables.
const testSchema = schema.Default

// pipelineOpts shapes a pipeline; the zero value is one partition.
type pipelineOpts struct {
	// partitions of the topic (default 1).
	partitions int32
	// publishTo overrides the publisher's brokers (e.g. a closed port); the
	// topic is still created on the test broker.
	publishTo []string
	// produceTimeout of the publisher (default 5s).
	produceTimeout time.Duration
	// readWaitMax is the longest a read with a consistency token waits
	// (default 10s).
	readWaitMax time.Duration
	// window is the appliers' dedup window (default 0: none).
	window time.Duration
}

// pipeline is heed wired in-process the way cmd/heed wires it: a fresh
// database migrated into testSchema, an embedded broker over TCP, the ledger
// service served on a real listener, and appliers started on demand.
type pipeline struct {
	broker  []string
	topic   string
	group   string
	pool    *pgxpool.Pool
	pub     *ingest.Publisher
	baseURL string
	// client speaks the Connect protocol over HTTP/1.1 (http.DefaultClient).
	client ledgerv1connect.LedgerServiceClient
	// grpc speaks gRPC over cleartext HTTP/2.
	grpc ledgerv1connect.LedgerServiceClient
	// admin is a plain Kafka client on the test broker, for kadm and raw produce.
	admin *kgo.Client
	// window is the appliers' dedup window.
	window time.Duration
}

func newPipeline(t *testing.T, opts pipelineOpts) *pipeline {
	t.Helper()
	if opts.partitions <= 0 {
		opts.partitions = 1
	}
	if opts.produceTimeout <= 0 {
		opts.produceTimeout = 5 * time.Second
	}
	if opts.readWaitMax <= 0 {
		opts.readWaitMax = 10 * time.Second
	}
	dbURL := testenv.PostgresURL(t)
	b := testenv.Broker(t, opts.partitions)
	logger := testenv.Logger(t)
	ctx := t.Context()

	p := &pipeline{broker: b.Addrs(), topic: "heed.ledger", group: "heed-applier", window: opts.window}
	pool, err := schema.Connect(ctx, dbURL, testSchema, 8)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(pool.Close)
	if err := schema.Migrate(ctx, pool, testSchema, ledger.Schema, logger); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	p.pool = pool

	admin, err := kgo.NewClient(kgo.SeedBrokers(p.broker...), kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)), kgo.DefaultProduceTopic(p.topic))
	if err != nil {
		t.Fatalf("admin client: %v", err)
	}
	t.Cleanup(admin.Close)
	p.admin = admin

	brokers := p.broker
	if opts.publishTo != nil {
		brokers = opts.publishTo
	}
	pub, err := ingest.NewPublisher(ingest.Config{Brokers: brokers, Topic: p.topic, ProduceTimeout: opts.produceTimeout, Logger: logger})
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	t.Cleanup(pub.Close)
	p.pub = pub
	topicVia := pub.Client()
	if opts.publishTo != nil {
		topicVia = admin // the publisher cannot reach the broker
	}
	n, err := ingest.EnsureTopic(ctx, topicVia, p.topic, opts.partitions, -1)
	if err != nil {
		t.Fatalf("ensure topic: %v", err)
	}
	if n != opts.partitions {
		t.Fatalf("topic has %d partitions, want %d", n, opts.partitions)
	}

	srv := ingest.NewServer(logger)
	svc := ledger.NewService(pub, pool, p.topic, opts.readWaitMax, ledger.WithTopicEnds(consistency.NewEnds(pub, time.Second)),
		ledger.WithRecordReader(func(ctx context.Context, partition int32, offset int64) ([]byte, []byte, error) {
			r, err := readRecord(ctx, p.broker, p.topic, consistency.Token{Partition: partition, Offset: offset})
			if err != nil {
				return nil, nil, err
			}
			return r.Key, r.Value, nil
		}))
	path, h := ledgerv1connect.NewLedgerServiceHandler(svc, ingest.HandlerOptions()...)
	srv.Mount(ledgerv1connect.LedgerServiceName, path, h)
	ln, err := ingest.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p.baseURL = "http://" + ln.Addr().String()
	serveCtx, stopServe := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(serveCtx, ln) }()
	t.Cleanup(func() {
		stopServe()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})

	// The relay of follow-ups (issue 28), as `heed apply` runs it.
	relay := outbox.New(pool, pub, outbox.Config{Topic: p.topic, Poll: 20 * time.Millisecond, Logger: logger})
	relayCtx, stopRelay := context.WithCancel(context.Background())
	relayed := make(chan error, 1)
	go func() { relayed <- relay.Run(relayCtx) }()
	t.Cleanup(func() {
		stopRelay()
		<-relayed
	})

	p.client = ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, p.baseURL)
	h2c := &http.Client{Transport: &http.Transport{Protocols: h2cProtocols()}}
	p.grpc = ledgerv1connect.NewLedgerServiceClient(h2c, p.baseURL, connect.WithGRPC())
	return p
}

func h2cProtocols() *http.Protocols {
	ps := new(http.Protocols)
	ps.SetUnencryptedHTTP2(true)
	return ps
}

// runningApplier is an applier.Applier running in a goroutine.
type runningApplier struct {
	*applier.Applier
	stopOnce sync.Once
	cancel   context.CancelFunc
	done     chan error
}

// startApplier starts a member of the pipeline's group; it is stopped in
// t.Cleanup unless the test stops it first.
func (p *pipeline) startApplier(t *testing.T) *runningApplier {
	t.Helper()
	a := p.newApplier(t)
	ctx, cancel := context.WithCancel(context.Background())
	r := &runningApplier{Applier: a, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// newApplier creates a member of the pipeline's group, not running.
func (p *pipeline) newApplier(t *testing.T) *applier.Applier {
	t.Helper()
	a, err := applier.New(applier.Config{
		Brokers:         p.broker,
		Topic:           p.topic,
		Group:           p.group,
		MaxBatchRecords: 16,
		DedupWindow:     p.window,
		Logger:          testenv.Logger(t),
	}, p.pool, ledger.Applier{})
	if err != nil {
		t.Fatalf("applier: %v", err)
	}
	return a
}

// stop cancels the applier and waits for Run to return (it commits marked
// offsets and leaves the group).
func (r *runningApplier) stop(t *testing.T) {
	t.Helper()
	r.stopOnce.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("applier run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("applier did not stop within 30s")
		}
	})
}

func (p *pipeline) open(t *testing.T, requestID, account string) *ledgerv1.OpenAccountResponse {
	t.Helper()
	res, err := p.client.OpenAccount(t.Context(), connect.NewRequest(&ledgerv1.OpenAccountRequest{RequestId: requestID, AccountId: account}))
	if err != nil {
		t.Fatalf("OpenAccount(%s, %s): %v", requestID, account, err)
	}
	return res.Msg
}

func (p *pipeline) deposit(t *testing.T, requestID, account string, amount int64) *ledgerv1.DepositResponse {
	t.Helper()
	res, err := p.client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: requestID, AccountId: account, Amount: amount}))
	if err != nil {
		t.Fatalf("Deposit(%s, %s, %d): %v", requestID, account, amount, err)
	}
	return res.Msg
}

func (p *pipeline) withdraw(t *testing.T, requestID, account string, amount int64) *ledgerv1.WithdrawResponse {
	t.Helper()
	res, err := p.client.Withdraw(t.Context(), connect.NewRequest(&ledgerv1.WithdrawRequest{RequestId: requestID, AccountId: account, Amount: amount}))
	if err != nil {
		t.Fatalf("Withdraw(%s, %s, %d): %v", requestID, account, amount, err)
	}
	return res.Msg
}

// balance reads an account through GetAccount after the write named by token
// is applied (read-your-writes).
func (p *pipeline) balance(t *testing.T, account, token string) int64 {
	t.Helper()
	res, err := p.client.GetAccount(t.Context(), connect.NewRequest(&ledgerv1.GetAccountRequest{AccountId: account, ConsistencyToken: token}))
	if err != nil {
		t.Fatalf("GetAccount(%s): %v", account, err)
	}
	return res.Msg.GetAccount().GetBalance()
}

// result reads a command's outcome after the write named by token is applied.
func (p *pipeline) result(t *testing.T, requestID, token string) *ledgerv1.GetCommandResultResponse {
	t.Helper()
	res, err := p.client.GetCommandResult(t.Context(), connect.NewRequest(&ledgerv1.GetCommandResultRequest{
		Ref:              &ledgerv1.GetCommandResultRequest_RequestId{RequestId: requestID},
		ConsistencyToken: token,
	}))
	if err != nil {
		t.Fatalf("GetCommandResult(%s): %v", requestID, err)
	}
	return res.Msg
}

// wantRejected checks that the command sent with requestID was rejected with
// a reason containing want.
func (p *pipeline) wantRejected(t *testing.T, requestID, token, want string) {
	t.Helper()
	r := p.result(t, requestID, token)
	if r.GetStatus() != ledgerv1.CommandStatus_COMMAND_STATUS_REJECTED || !strings.Contains(r.GetReason(), want) {
		t.Errorf("command %s: status %v reason %q, want REJECTED with %q", requestID, r.GetStatus(), r.GetReason(), want)
	}
}

// count runs a SELECT count(*) query.
// balanceAfter reads the balance_after recorded for the command sent with
// requestID, as GetCommandResult does.
func (p *pipeline) balanceAfter(t *testing.T, requestID string) int64 {
	t.Helper()
	rows, err := dedup.Results(t.Context(), p.pool, envelope.EventID(requestID))
	if err != nil || len(rows) != 1 {
		t.Fatalf("results of %s: %v, %v; want one row", requestID, rows, err)
	}
	var res ledgerv1.CommandResult
	if err := proto.Unmarshal(rows[0].Result, &res); err != nil {
		t.Fatalf("result of %s: %v", requestID, err)
	}
	return res.GetBalanceAfter()
}

func (p *pipeline) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := p.pool.QueryRow(t.Context(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// token parses a consistency token.
func token(t *testing.T, s string) consistency.Token {
	t.Helper()
	tok, err := consistency.Parse(s)
	if err != nil {
		t.Fatalf("parse token: %v", err)
	}
	return tok
}

// waitApplied waits until the write named by tok is applied.
func (p *pipeline) waitApplied(t *testing.T, tok string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := consistency.Wait(ctx, p.pool, p.topic, token(t, tok)); err != nil {
		t.Fatalf("wait for %s: %v", tok, err)
	}
}

// endOffsets returns the topic's end offset per partition.
func (p *pipeline) endOffsets(t *testing.T) map[int32]int64 {
	t.Helper()
	listed, err := kadm.NewClient(p.admin).ListEndOffsets(t.Context(), p.topic)
	if err != nil {
		t.Fatalf("list end offsets: %v", err)
	}
	out := make(map[int32]int64)
	listed.Each(func(o kadm.ListedOffset) {
		if o.Err != nil {
			t.Fatalf("end offset of partition %d: %v", o.Partition, o.Err)
		}
		out[o.Partition] = o.Offset
	})
	return out
}

// committed returns the group's committed offset for partition (-1: none).
func (p *pipeline) committed(t *testing.T, partition int32) int64 {
	t.Helper()
	offs, err := kadm.NewClient(p.admin).FetchOffsets(t.Context(), p.group)
	if err != nil {
		t.Fatalf("fetch offsets: %v", err)
	}
	o, ok := offs.Lookup(p.topic, partition)
	if !ok {
		return -1
	}
	if o.Err != nil {
		t.Fatalf("fetch offset of partition %d: %v", partition, o.Err)
	}
	return o.At
}

// produceRaw writes records straight to the topic (keyed like the publisher)
// and returns them with their partitions and offsets filled in.
func (p *pipeline) produceRaw(t *testing.T, recs ...*kgo.Record) []*kgo.Record {
	t.Helper()
	if err := p.admin.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	return recs
}

// fetchRecord reads the record at tok from the topic.
func (p *pipeline) fetchRecord(t *testing.T, tok consistency.Token) *kgo.Record {
	t.Helper()
	r, err := readRecord(t.Context(), p.broker, p.topic, tok)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// readRecord reads the record at tok from topic.
func readRecord(ctx context.Context, brokers []string, topic string, tok consistency.Token) (*kgo.Record, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		topic: {tok.Partition: kgo.NewOffset().At(tok.Offset)},
	}))
	if err != nil {
		return nil, fmt.Errorf("consumer: %w", err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("fetch record at %d/%d: %w", tok.Partition, tok.Offset, err)
		}
		var got *kgo.Record
		fs.EachRecord(func(r *kgo.Record) {
			if got == nil && r.Offset == tok.Offset {
				got = r
			}
		})
		if got != nil {
			return got, nil
		}
	}
}

// balances returns every account's balance.
func (p *pipeline) balances(t *testing.T) map[string]int64 {
	t.Helper()
	rows, err := p.pool.Query(t.Context(), `SELECT account_id, balance FROM accounts`)
	if err != nil {
		t.Fatalf("read balances: %v", err)
	}
	defer rows.Close()
	out := make(map[string]int64)
	for rows.Next() {
		var (
			id string
			b  int64
		)
		if err := rows.Scan(&id, &b); err != nil {
			t.Fatalf("read balances: %v", err)
		}
		out[id] = b
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read balances: %v", err)
	}
	return out
}
