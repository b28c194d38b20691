package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"google.golang.org/protobuf/proto"

	"github.com/heed-dev/heed/envelope"
	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/ledger"
)

// ingestRounds is how many times the ingest phase alternates between the
// no-op handler and the real one, each for Duration/ingestRounds: on a shared
// 2-core machine, back-to-back runs drift by 20% and more within seconds;
// short alternations keep that drift out of the ratio.
const ingestRounds = 4

// ingest measures Deposit over the wire with Clients concurrent callers,
// alternately against a handler that answers without producing and against
// the real one, both on ingest's server stack (validation, reflection, health)
// in this process, Duration in all for each.
func (e *env) ingest(ctx context.Context, r *Result) error {
	r.Clients, r.Protocol = e.cfg.Clients, e.cfg.Protocol
	topic, cl, del, err := e.topic(ctx, "ingest")
	if err != nil {
		return err
	}
	defer del()
	var produced produceCounter
	pub, err := e.publisher(topic, kgo.WithHooks(&produced))
	if err != nil {
		return err
	}
	defer pub.Close()
	round := max(e.cfg.Duration/ingestRounds, 100*time.Millisecond)
	var noop, real loadResult
	for i := range ingestRounds {
		n, err := e.labelledRun(ctx, "noop", noopPublisher{}, "", round)
		if err != nil {
			return fmt.Errorf("no-op handler: %w", err)
		}
		noop.add(n)
		p, err := e.labelledRun(ctx, "deposit", pub, topic, round)
		if err != nil {
			return err
		}
		real.add(p)
		e.progress("ingest round %d/%d: no-op handler %.0f req/s (%.0f µs CPU, %.3f page faults each), Deposit to Kafka %.0f req/s (%.0f µs CPU, %.3f page faults each)",
			i+1, ingestRounds, n.rps(), us(n.cpuPerCommand()), n.faultsPerCommand(), p.rps(), us(p.cpuPerCommand()), p.faultsPerCommand())
	}
	noop.lat.sort()
	real.lat.sort()
	// Every acknowledged command is on the topic, once.
	n, err := topicRecords(ctx, cl, topic)
	if err != nil {
		return err
	}
	if n != real.acks {
		return fmt.Errorf("WRONG RESULT: %d commands acknowledged, the topic holds %d records", real.acks, n)
	}
	r.NoopRPS, r.NoopP50, r.NoopP99 = noop.rps(), ms(noop.lat.quantile(0.5)), ms(noop.lat.quantile(0.99))
	r.IngestRPS, r.IngestP50, r.IngestP99 = real.rps(), ms(real.lat.quantile(0.5)), ms(real.lat.quantile(0.99))
	r.NoopCPUPerCommand, r.IngestCPUPerCommand = us(noop.cpuPerCommand()), us(real.cpuPerCommand())
	if reqs := produced.requests.Load(); reqs > 0 {
		r.IngestRecordsPerProduce = float64(produced.records.Load()) / float64(reqs)
	}
	e.progress("ingest, no-op handler: %.0f req/s, p50 %.2f ms, p99 %.2f ms", r.NoopRPS, r.NoopP50, r.NoopP99)
	e.progress("ingest: %.0f req/s, p50 %.2f ms, p99 %.2f ms (%d records on the topic)", r.IngestRPS, r.IngestP50, r.IngestP99, n)
	return nil
}

// publisher is an ingest.Publisher for topic with the configured producer
// settings and opts.
func (e *env) publisher(topic string, opts ...kgo.Opt) (*ingest.Publisher, error) {
	c := e.cfg.Ingest
	c.Brokers, c.Topic, c.Logger = e.broker.Addrs(), topic, e.cfg.Logger.With("component", "ingest")
	c.KafkaOpts = append(slices.Clip(c.KafkaOpts), opts...)
	return ingest.NewPublisher(c)
}

// produceCounter is a kgo hook counting produce requests and the records
// they carried.
type produceCounter struct{ requests, records atomic.Int64 }

func (c *produceCounter) OnBrokerWrite(_ kgo.BrokerMetadata, key int16, _ int, _, _ time.Duration, err error) {
	if key == 0 && err == nil { // 0: Produce
		c.requests.Add(1)
	}
}

func (c *produceCounter) OnProduceBatchWritten(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.ProduceBatchMetrics) {
	c.records.Add(int64(m.NumRecords))
}

// noopPublisher answers every command at once without producing.
type noopPublisher struct{}

func (noopPublisher) Publish(_ context.Context, _, requestID string, _ proto.Message) (string, string, error) {
	return envelope.EventID(requestID).String(), "", nil
}

type loadResult struct {
	measured time.Duration // the measured window (after warm-up)
	lat      latencies     // one sample per command in the window
	acks     int64         // every acknowledged command, warm-up included
	cpu      time.Duration // this process's CPU time in the measured window
	faults   int64         // and the page faults it took there
}

// cpuPerCommand is the process's CPU time per command answered in the window.
func (l loadResult) cpuPerCommand() time.Duration {
	if len(l.lat) == 0 {
		return 0
	}
	return l.cpu / time.Duration(len(l.lat))
}

// faultsPerCommand is the process's page faults per command answered in the
// window.
func (l loadResult) faultsPerCommand() float64 {
	if len(l.lat) == 0 {
		return 0
	}
	return float64(l.faults) / float64(len(l.lat))
}

// processUsage is the CPU time (user and system) this process has used so
// far, and the page faults it took that needed no I/O (first touches of fresh
// memory, mostly: on a VM each costs microseconds).
func processUsage() (time.Duration, int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt
}

func (l loadResult) rps() float64 {
	if l.measured <= 0 {
		return 0
	}
	return float64(len(l.lat)) / l.measured.Seconds()
}

func (l *loadResult) add(o loadResult) {
	l.measured += o.measured
	l.lat = append(l.lat, o.lat...)
	l.acks += o.acks
	l.cpu += o.cpu
	l.faults += o.faults
}

// labelledRun is ingestRun with the server's and the callers' goroutines
// labelled handler=name in a CPU profile (go tool pprof -tagfocus
// handler=noop). The producer's and the broker's goroutines started earlier
// and carry no handler label.
func (e *env) labelledRun(ctx context.Context, name string, pub ledger.Publisher, topic string, d time.Duration) (l loadResult, err error) {
	pprof.Do(ctx, pprof.Labels("handler", name), func(ctx context.Context) { l, err = e.ingestRun(ctx, pub, topic, d) })
	return l, err
}

// ingestRun serves pub and drives it with closed-loop callers: a warm-up,
// then d measured.
func (e *env) ingestRun(ctx context.Context, pub ledger.Publisher, topic string, d time.Duration) (loadResult, error) {
	addr, stop, err := e.serve(ctx, pub, nil, topic) // Deposit does not read the database
	if err != nil {
		return loadResult{}, err
	}
	defer stop()
	client, closeIdle := e.client(addr)
	defer closeIdle() // before stop
	warm := min(time.Second, d/5)
	start := time.Now()
	from, until := start.Add(warm), start.Add(warm+d)

	var (
		mu      sync.Mutex
		all     latencies
		acks    int64
		failure error
	)
	usage := make(chan loadResult, 1)
	go func() { // the process's CPU time and page faults in the measured window
		time.Sleep(time.Until(from))
		c0, f0 := processUsage()
		time.Sleep(time.Until(until))
		c1, f1 := processUsage()
		usage <- loadResult{cpu: c1 - c0, faults: f1 - f0}
	}()
	var wg sync.WaitGroup
	for c := range e.cfg.Clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), uint64(start.UnixNano())))
			var mine latencies
			var n int64
			var ferr error
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(until) {
					break
				}
				_, err := client.Deposit(ctx, e.depositRequest(rng))
				if err != nil {
					ferr = err
					break
				}
				n++
				if !t0.Before(from) {
					mine = append(mine, time.Since(t0))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, mine...)
			acks += n
			if ferr != nil && failure == nil {
				failure = ferr
			}
		}()
	}
	wg.Wait()
	if failure != nil {
		return loadResult{}, fmt.Errorf("a Deposit failed under load: %w", failure)
	}
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}
	u := <-usage
	return loadResult{measured: d, lat: all, acks: acks, cpu: u.cpu, faults: u.faults}, nil
}

// serve runs the ledger service publishing through pub on a free loopback
// port until stop is called.
func (e *env) serve(ctx context.Context, pub ledger.Publisher, pool *pgxpool.Pool, topic string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := ingest.NewServer(e.cfg.Logger.With("component", "server"))
	path, h := ledgerv1connect.NewLedgerServiceHandler(ledger.NewService(pub, pool, topic, 5*time.Second), ingest.HandlerOptions()...)
	srv.Mount(ledgerv1connect.LedgerServiceName, path, h)
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx, ln) }()
	stop := func() {
		cancel()
		<-done
	}
	return ln.Addr().String(), stop, nil
}

// client is a ledger client for addr sharing one connection pool, as a
// long-lived service calling heed would hold it, and a function that closes
// the pool's idle connections: called before the server stops, it spares the
// server's graceful shutdown a wait for HTTP/2 clients to hang up.
func (e *env) client(addr string) (ledgerv1connect.LedgerServiceClient, func()) {
	tr := &http.Transport{
		MaxIdleConns:        2 * e.cfg.Clients,
		MaxIdleConnsPerHost: 2 * e.cfg.Clients,
		IdleConnTimeout:     time.Minute,
	}
	var opts []connect.ClientOption
	switch e.cfg.Protocol {
	case "connect-h2":
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
	case "grpc":
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetUnencryptedHTTP2(true)
		opts = append(opts, connect.WithGRPC())
	}
	return ledgerv1connect.NewLedgerServiceClient(&http.Client{Transport: tr}, "http://"+addr, opts...), tr.CloseIdleConnections
}

// depositRequest is a deposit of 1 to a random account, with a UUIDv7
// request ID as a client following the README sends it.
func (e *env) depositRequest(rng *rand.Rand) *connect.Request[ledgerv1.DepositRequest] {
	return connect.NewRequest(&ledgerv1.DepositRequest{
		RequestId: uuid.Must(uuid.NewV7()).String(),
		AccountId: accountName(rng.IntN(e.cfg.Accounts)),
		Amount:    1,
	})
}

// topicRecords sums the end offsets of topic's partitions.
func topicRecords(ctx context.Context, cl *kgo.Client, topic string) (int64, error) {
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, topic)
	if err != nil {
		return 0, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	if err := ends.Error(); err != nil {
		return 0, fmt.Errorf("list end offsets of %s: %w", topic, err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n, nil
}

// latencies is a sorted set of samples.
type latencies []time.Duration

func (l latencies) sort() { slices.Sort(l) }

// quantile of sorted samples (nearest rank); 0 when there are none.
func (l latencies) quantile(q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
