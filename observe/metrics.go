// Package observe is heed's operational surface: Prometheus metrics, health
// and readiness, and OpenTelemetry traces, for any domain. cmd/heed wires it
// into serve, apply and dev; a domain that builds its own binary can do the
// same with its own handlers.
//
// Metric names follow Prometheus conventions: a heed_ prefix, base units
// (seconds, bytes), _total for counters. The Kafka client's own metrics come
// from franz-go's kprom plugin (heed_kafka_*), the Go runtime's and the
// process's from the client library's collectors.
package observe

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/plugin/kprom"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/heed-dev/heed/applier"
	"github.com/heed-dev/heed/outbox"
)

// Metrics holds a registry with heed's metrics. Create it with NewMetrics;
// its methods are safe for concurrent use.
type Metrics struct {
	reg            *prometheus.Registry
	rpcs           *prometheus.CounterVec
	rpcSeconds     *prometheus.HistogramVec
	produceSeconds prometheus.Histogram
	produceErrors  prometheus.Counter
	batchRecords   prometheus.Histogram
	batchSeconds   prometheus.Histogram
	records        *prometheus.CounterVec
	retries        *prometheus.CounterVec

	mu         sync.RWMutex
	procedures map[string]bool // the procedures served: other paths are counted as UnknownProcedure
}

// UnknownProcedure is the procedure label of a refused request whose path is
// not a procedure the server serves: a client's URL path never becomes a
// label value, so no client can grow the number of series.
const UnknownProcedure = "unknown"

// NewMetrics creates a registry with heed's metrics, the Go runtime's and
// the process's, and heed_build_info.
func NewMetrics() *Metrics {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(buildInfo())
	latency := []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}
	m := &Metrics{
		reg: reg,
		rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heed_rpc_requests_total",
			Help: "RPCs handled, by procedure and Connect code (ok for success)."}, []string{"procedure", "code"}),
		rpcSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "heed_rpc_duration_seconds",
			Help: "Time to handle an RPC, by procedure and code.", Buckets: latency}, []string{"procedure", "code"}),
		produceSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "heed_produce_duration_seconds",
			Help: "Time from producing a command's event until the broker answered (acks=all).", Buckets: latency}),
		produceErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "heed_produce_errors_total",
			Help: "Produces the broker did not acknowledge (the command failed with unavailable)."}),
		batchRecords: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "heed_apply_batch_records",
			Help: "Records per committed apply transaction.", Buckets: prometheus.ExponentialBuckets(1, 4, 9)}),
		batchSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "heed_apply_batch_duration_seconds",
			Help: "Time of a committed apply transaction, from decoding its records to COMMIT.", Buckets: latency}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heed_apply_records_total",
			Help: "Records the applier committed, by what became of them: applied, duplicate (suppressed), conflict, quarantined, parked."}, []string{"outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "heed_apply_retries_total",
			Help: "Failed apply attempts tried again, by class (transient, systemic, event-caused, poison, lookup-skipped, recorded-concurrently, quarantine-store)."}, []string{"class"}),
	}
	reg.MustRegister(m.rpcs, m.rpcSeconds, m.produceSeconds, m.produceErrors, m.batchRecords, m.batchSeconds, m.records, m.retries)
	for _, o := range []string{"applied", "duplicate", "conflict", "quarantined", "parked"} {
		m.records.WithLabelValues(o)
	}
	for _, c := range []string{"transient", "systemic", "event-caused", "poison", "quarantine-store"} {
		m.retries.WithLabelValues(c)
	}
	return m
}

// Registry is the registry to add collectors to. Serve what Gatherer
// gathers, not the registry itself.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Gatherer gathers the registry for /metrics (Serve and Handler use it),
// with any gauge named like a counter (..._total) served without the
// suffix: kprom names its buffered-record gauges
// heed_kafka_buffered_{produce,fetch}_records_total, served as
// heed_kafka_buffered_{produce,fetch}_records (promlint).
func (m *Metrics) Gatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := m.reg.Gather()
		for _, f := range fams {
			if name := f.GetName(); f.GetType() == dto.MetricType_GAUGE && strings.HasSuffix(name, "_total") {
				f.Name = proto.String(strings.TrimSuffix(name, "_total"))
			}
		}
		return fams, err
	})
}

// KafkaOpts are the options of one Kafka client that feed heed_kafka_*
// (kprom), labelled client=name: one name per client of the process
// ("producer", "applier", "relay"), node_id and, for records and bytes
// produced and fetched, topic.
func (m *Metrics) KafkaOpts(name string) []kgo.Opt {
	k := kprom.NewMetrics("heed_kafka", kprom.Registerer(m.reg), kprom.Gatherer(m.reg),
		kprom.WithStaticLabel(prometheus.Labels{"client": name}),
		// Records and batches besides bytes, and the request latency: what
		// docs/OPERATIONS.md lists (kprom's defaults export bytes alone).
		kprom.FetchAndProduceDetail(kprom.ByNode, kprom.ByTopic, kprom.Records, kprom.Batches, kprom.UncompressedBytes),
		kprom.Histograms(kprom.RequestDurationE2E))
	return []kgo.Opt{kgo.WithHooks(k)}
}

// OnProduce records a produce (ingest.Config.OnProduce).
func (m *Metrics) OnProduce(took time.Duration, err error) {
	m.produceSeconds.Observe(took.Seconds())
	if err != nil {
		m.produceErrors.Inc()
	}
}

var _ applier.Observer = (*Metrics)(nil)

// BatchApplied implements applier.Observer.
func (m *Metrics) BatchApplied(_ int32, records []*kgo.Record, took time.Duration, s applier.BatchStats) {
	m.batchRecords.Observe(float64(len(records)))
	m.batchSeconds.Observe(took.Seconds())
	m.records.WithLabelValues("applied").Add(float64(s.Applied))
	m.records.WithLabelValues("duplicate").Add(float64(s.Duplicates))
	m.records.WithLabelValues("conflict").Add(float64(s.Conflicts))
	m.records.WithLabelValues("quarantined").Add(float64(s.Quarantined))
	m.records.WithLabelValues("parked").Add(float64(s.Parked))
}

// BatchRetried implements applier.Observer.
func (m *Metrics) BatchRetried(_ int32, class string) { m.retries.WithLabelValues(class).Inc() }

// Procedures adds the procedures the server serves ("/pkg.Service/Method"):
// the only values, with UnknownProcedure, of the procedure label of refused
// requests (see Refused).
func (m *Metrics) Procedures(procedures ...string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.procedures == nil {
		m.procedures = map[string]bool{}
	}
	for _, p := range procedures {
		m.procedures[p] = true
	}
}

// Services adds the procedures of the services named (fully qualified, as
// served), from their descriptors in protoregistry.GlobalFiles, where
// generated code registers them (see Procedures). A name without a
// descriptor adds nothing: its requests, when refused, count as unknown.
func (m *Metrics) Services(names ...string) {
	var procs []string
	for _, name := range names {
		d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(name))
		sd, ok := d.(protoreflect.ServiceDescriptor)
		if err != nil || !ok {
			continue
		}
		for i := range sd.Methods().Len() {
			procs = append(procs, "/"+name+"/"+string(sd.Methods().Get(i).Name()))
		}
	}
	m.Procedures(procs...)
}

// procedure is the label value of a request for path: path if it is a
// procedure the server serves, else UnknownProcedure.
func (m *Metrics) procedure(path string) string {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.procedures[path] {
		return path
	}
	return UnknownProcedure
}

// Refused counts an RPC refused before its handler (auth.Guard) with code.
// path is the request's URL path: counted under its procedure when it is one
// the server serves (Procedures), under UnknownProcedure otherwise.
func (m *Metrics) Refused(path string, code connect.Code) {
	m.rpcs.WithLabelValues(m.procedure(path), code.String()).Inc()
}

// Interceptor counts and times the RPCs of the handlers built with it.
func (m *Metrics) Interceptor() connect.Interceptor { return rpcInterceptor{m} }

type rpcInterceptor struct{ m *Metrics }

func (i rpcInterceptor) observe(procedure string, began time.Time, err error) {
	code := "ok"
	if err != nil {
		code = connect.CodeOf(err).String()
	}
	i.m.rpcs.WithLabelValues(procedure, code).Inc()
	i.m.rpcSeconds.WithLabelValues(procedure, code).Observe(time.Since(began).Seconds())
}

func (i rpcInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		began := time.Now()
		res, err := next(ctx, req)
		if !req.Spec().IsClient {
			i.observe(req.Spec().Procedure, began, err)
		}
		return res, err
	}
}

func (i rpcInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (i rpcInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		began := time.Now()
		err := next(ctx, conn)
		i.observe(conn.Spec().Procedure, began, err)
		return err
	}
}

// WatchPool exports pool's statistics as heed_db_pool_* gauges and counters.
func (m *Metrics) WatchPool(pool *pgxpool.Pool) {
	m.reg.MustRegister(poolCollector{pool})
}

var (
	poolAcquired  = prometheus.NewDesc("heed_db_pool_acquired_connections", "Connections in use.", nil, nil)
	poolIdle      = prometheus.NewDesc("heed_db_pool_idle_connections", "Idle connections.", nil, nil)
	poolTotal     = prometheus.NewDesc("heed_db_pool_connections", "Open connections.", nil, nil)
	poolMax       = prometheus.NewDesc("heed_db_pool_max_connections", "The pool's size.", nil, nil)
	poolAcquires  = prometheus.NewDesc("heed_db_pool_acquires_total", "Connections acquired.", nil, nil)
	poolWaits     = prometheus.NewDesc("heed_db_pool_empty_acquires_total", "Acquires that waited for a connection.", nil, nil)
	poolWaitTotal = prometheus.NewDesc("heed_db_pool_acquire_wait_seconds_total", "Time spent acquiring connections.", nil, nil)
)

type poolCollector struct{ pool *pgxpool.Pool }

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolAcquired, poolIdle, poolTotal, poolMax, poolAcquires, poolWaits, poolWaitTotal} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	ch <- prometheus.MustNewConstMetric(poolAcquired, prometheus.GaugeValue, float64(s.AcquiredConns()))
	ch <- prometheus.MustNewConstMetric(poolIdle, prometheus.GaugeValue, float64(s.IdleConns()))
	ch <- prometheus.MustNewConstMetric(poolTotal, prometheus.GaugeValue, float64(s.TotalConns()))
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(s.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(s.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaits, prometheus.CounterValue, float64(s.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolWaitTotal, prometheus.CounterValue, s.AcquireDuration().Seconds())
}

// Positions reads, at each scrape, the applied positions and the quarantine
// from the projection and the topic's end offsets.
type Positions struct {
	Pool  *pgxpool.Pool
	Topic string
	// Ends returns the topic's end offsets (consistency.ListEndOffsets).
	Ends func(ctx context.Context) (map[int32]int64, error)
}

// Every process that reads the same projection and topic exports the same
// values: several replicas (serve and apply, two appliers) export one series
// per topic and partition each, told apart only by Prometheus's instance and
// job labels. Aggregate them with max by (topic, partition) first, then sum
// over the partitions (docs/OPERATIONS.md).
var (
	posApplied  = prometheus.NewDesc("heed_applier_position", "Next offset to apply, per partition (the applied position in Postgres).", []string{"topic", "partition"}, nil)
	posEnd      = prometheus.NewDesc("heed_topic_end_offset", "The topic's high watermark, per partition.", []string{"topic", "partition"}, nil)
	posLag      = prometheus.NewDesc("heed_applier_lag_records", "Records in the topic not applied yet (high watermark − applied position), per partition; the same in every process that exports it: aggregate with max by (topic, partition).", []string{"topic", "partition"}, nil)
	quarantined = prometheus.NewDesc("heed_quarantine_records", "Records in the quarantine, by kind (poison, conflict, parked) and state (open, redriven, dropped).", []string{"topic", "kind", "state"}, nil)
	scrapeOK    = prometheus.NewDesc("heed_positions_scrape_success", "1 when this scrape read the applied positions, the quarantine and the topic's end; 0 when it could not.", []string{"topic"}, nil)
	readyCheck  = prometheus.NewDesc("heed_readiness_check_success", "1 when the readiness check passes, 0 when it fails (what /readyz answers, per check).", []string{"check"}, nil)
)

// WatchStalls exports heed_applier_stalled_partitions: how many partitions
// the applier owns have records waiting and did not move for its stall
// timeout (applier.Applier.Stalled).
func (m *Metrics) WatchStalls(stalled func() []applier.Stall) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "heed_applier_stalled_partitions",
		Help: "Partitions this applier owns that have records waiting and whose applied position did not move for --stall-timeout."},
		func() float64 { return float64(len(stalled())) }))
}

// WatchAssignment exports heed_applier_assigned_partitions: how many
// partitions this applier owns now (applier.Applier.Partitions). Only
// appliers export it, so its absence says no applier runs, and its sum over
// the group's members is the topic's partition count once the group settled.
func (m *Metrics) WatchAssignment(partitions func() []int32) {
	m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "heed_applier_assigned_partitions",
		Help: "Partitions this applier owns now; exported by appliers alone (absent: no applier runs)."},
		func() float64 { return float64(len(partitions())) }))
}

// WatchHealth exports h's readiness checks as heed_readiness_check_success,
// one series per check (their names are the code's: a bounded set), run at
// most once a second like /readyz.
func (m *Metrics) WatchHealth(h *Health) { m.reg.MustRegister(healthCollector{h}) }

type healthCollector struct{ h *Health }

func (c healthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- readyCheck }

func (c healthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for name, err := range c.h.Results(ctx) {
		ok := 1.0
		if err != nil {
			ok = 0
		}
		ch <- prometheus.MustNewConstMetric(readyCheck, prometheus.GaugeValue, ok, name)
	}
}

// WatchPositions exports p as heed_applier_position, heed_topic_end_offset,
// heed_applier_lag_records, heed_quarantine_records and
// heed_positions_scrape_success. Every process that can read the projection
// and the topic should (serve, apply, relay, dev): lag is then visible
// whether or not an applier runs.
func (m *Metrics) WatchPositions(p Positions) { m.reg.MustRegister(p) }

func (p Positions) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{posApplied, posEnd, posLag, quarantined, scrapeOK} {
		ch <- d
	}
}

func (p Positions) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	ok := 1.0
	if err := p.collect(ctx, ch); err != nil {
		ok = 0
	}
	ch <- prometheus.MustNewConstMetric(scrapeOK, prometheus.GaugeValue, ok, p.Topic)
}

// Read returns the applied positions and the topic's end offsets.
func (p Positions) Read(ctx context.Context) (applied, ends map[int32]int64, err error) {
	if applied, err = applier.AppliedPositions(ctx, p.Pool, p.Topic); err != nil {
		return nil, nil, err
	}
	if ends, err = p.Ends(ctx); err != nil {
		return nil, nil, err
	}
	return applied, ends, nil
}

// Lag is how many records of the topic are not applied yet, summed over
// the partitions.
func (p Positions) Lag(ctx context.Context) (int64, error) {
	applied, ends, err := p.Read(ctx)
	if err != nil {
		return 0, err
	}
	var lag int64
	for part, end := range ends {
		lag += max(end-applied[part], 0)
	}
	return lag, nil
}

func (p Positions) collect(ctx context.Context, ch chan<- prometheus.Metric) error {
	applied, ends, err := p.Read(ctx)
	if err != nil {
		return err
	}
	for part, end := range ends {
		label := strconv.Itoa(int(part))
		pos := applied[part]
		ch <- prometheus.MustNewConstMetric(posApplied, prometheus.GaugeValue, float64(pos), p.Topic, label)
		ch <- prometheus.MustNewConstMetric(posEnd, prometheus.GaugeValue, float64(end), p.Topic, label)
		ch <- prometheus.MustNewConstMetric(posLag, prometheus.GaugeValue, float64(max(end-pos, 0)), p.Topic, label)
	}
	rows, err := p.Pool.Query(ctx, `SELECT kind, state, count(*) FROM quarantine WHERE topic = $1 GROUP BY 1, 2`, p.Topic)
	if err != nil {
		return err
	}
	defer rows.Close()
	seen := map[[2]string]bool{}
	for rows.Next() {
		var (
			kind, state string
			n           int64
		)
		if err := rows.Scan(&kind, &state, &n); err != nil {
			return err
		}
		seen[[2]string{kind, state}] = true
		ch <- prometheus.MustNewConstMetric(quarantined, prometheus.GaugeValue, float64(n), p.Topic, kind, state)
	}
	if !seen[[2]string{"poison", "open"}] { // the series alerts watch, present at 0
		ch <- prometheus.MustNewConstMetric(quarantined, prometheus.GaugeValue, 0, p.Topic, "poison", "open")
	}
	return rows.Err()
}

// ErrNotReady is wrapped by the errors of failing readiness checks.
var ErrNotReady = errors.New("not ready")

// Relay is what WatchRelay reads: an outbox.Relay.
type Relay interface {
	Produced() int64
	Failures() int64
	Backlog() outbox.Backlog
}

var _ Relay = (*outbox.Relay)(nil)

var (
	relayUnsent   = prometheus.NewDesc("heed_relay_unsent_rows", "Follow-ups in the outbox of the partitions this process relays that are neither produced, seen (applied) nor failed, at the relay's last pass.", nil, nil)
	relayOldest   = prometheus.NewDesc("heed_relay_oldest_unsent_age_seconds", "Age (from the emitting record's time) of the oldest unsent follow-up; 0 when none.", nil, nil)
	relayProduced = prometheus.NewDesc("heed_relay_produced_total", "Follow-ups the relay produced (acknowledged by the broker).", nil, nil)
	relayFailures = prometheus.NewDesc("heed_relay_failures_total", "Follow-ups the broker refused for good (recorded in heed_outbox_failed; the relay went on).", nil, nil)
)

// WatchRelay exports r's backlog and counts (heed_relay_*).
func (m *Metrics) WatchRelay(r Relay) { m.reg.MustRegister(relayCollector{r}) }

type relayCollector struct{ r Relay }

func (c relayCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{relayUnsent, relayOldest, relayProduced, relayFailures} {
		ch <- d
	}
}

func (c relayCollector) Collect(ch chan<- prometheus.Metric) {
	b := c.r.Backlog()
	age := 0.0
	if !b.Oldest.IsZero() {
		age = max(time.Since(b.Oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(relayUnsent, prometheus.GaugeValue, float64(b.Unsent))
	ch <- prometheus.MustNewConstMetric(relayOldest, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(relayProduced, prometheus.CounterValue, float64(c.r.Produced()))
	ch <- prometheus.MustNewConstMetric(relayFailures, prometheus.CounterValue, float64(c.r.Failures()))
}
