package cli

import (
	"github.com/heed-dev/heed"

	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/netsec"
	"github.com/heed-dev/heed/retention"
)

// envName is the environment fallback of a flag: --database-url → HEED_DATABASE_URL.
func envName(flagName string) string {
	return "HEED_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func annotateEnv(fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) { f.Usage += " [$" + envName(f.Name) + "]" })
}

// applyEnv sets every flag not given on the command line from its HEED_*
// environment variable, if that is set.
func applyEnv(fs *flag.FlagSet) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v, ok := os.LookupEnv(envName(f.Name))
		if given[f.Name] || !ok || err != nil {
			return
		}
		if e := fs.Set(f.Name, v); e != nil {
			err = fmt.Errorf("%s=%q: %v%s (fix the variable or pass --%s)", envName(f.Name), v, e, durationHint(f, v), f.Name)
		}
	})
	return err
}

// Defaults shared by the verbs.
const (
	defaultListen     = "127.0.0.1:8080"
	defaultDataDir    = ".heed"
	defaultPartitions = 8
)

// kafkaFlags are the flags of every verb that talks to Kafka.
type kafkaFlags struct {
	dom     *heed.Domain // its defaults, event IDs, tables and handlers
	brokers string
	topic   string
	sec     netsec.Kafka
}

func (k *kafkaFlags) register(fs *flag.FlagSet, withBrokers bool) {
	if withBrokers {
		fs.StringVar(&k.brokers, "brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers")
		fs.BoolVar(&k.sec.TLS, "kafka-tls", false, "connect to the brokers over TLS")
		fs.StringVar(&k.sec.CA, "kafka-ca", "", "PEM file of the CA that signed the brokers' certificates (default: the system's roots)")
		fs.StringVar(&k.sec.Cert, "kafka-cert", "", "PEM client certificate for the brokers (mutual TLS), with --kafka-key")
		fs.StringVar(&k.sec.Key, "kafka-key", "", "PEM key of --kafka-cert")
		fs.StringVar(&k.sec.SASL, "kafka-sasl", "", "SASL mechanism: plain, scram-sha-256 or scram-sha-512 (use with --kafka-tls: plain sends the password as is)")
		fs.StringVar(&k.sec.User, "kafka-user", "", "SASL user")
		fs.StringVar(&k.sec.Password, "kafka-password", "", "SASL password; prefer HEED_KAFKA_PASSWORD to keep it out of the process list")
	}
	fs.StringVar(&k.topic, "topic", k.dom.DefaultTopic(), "the event topic (the source of truth)")
}

// clientOpts are the options of every Kafka client the verb creates: the
// seed brokers, TLS and SASL, and extra.
func (k *kafkaFlags) clientOpts(extra ...kgo.Opt) ([]kgo.Opt, error) {
	sec, err := k.sec.Opts()
	if err != nil {
		return nil, err
	}
	return append(append([]kgo.Opt{kgo.SeedBrokers(k.brokerList()...)}, sec...), extra...), nil
}

// newClient is a Kafka client with clientOpts.
func (k *kafkaFlags) newClient(extra ...kgo.Opt) (*kgo.Client, error) {
	opts, err := k.clientOpts(extra...)
	if err != nil {
		return nil, err
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("create Kafka client: %w", err)
	}
	return cl, nil
}

// obsFlags are the operational flags of serve, apply and dev: where metrics
// and health are served.
type obsFlags struct {
	metricsListen string
	readyMaxLag   int64
	readyMaxStall time.Duration
}

func (o *obsFlags) register(fs *flag.FlagSet, metricsDefault string, withLag bool) {
	fs.StringVar(&o.metricsListen, "metrics-listen", metricsDefault, "address to serve Prometheus /metrics, /healthz and /readyz on; \"\" serves none")
	if withLag {
		fs.Int64Var(&o.readyMaxLag, "ready-max-lag", 100000, "/readyz reports the applier not ready while more records than this wait to be applied (0: no bound)")
		fs.DurationVar(&o.readyMaxStall, "ready-max-stall", 30*time.Second, "/readyz reports the applier not ready while a partition it owns has records waiting and its applied position has not moved for this long (0: no bound)")
	}
}

// authFlags are the server's security flags.
type authFlags struct {
	tokensFile     string
	insecureNoAuth bool
	clientCA       string
	tlsCert        string
	tlsKey         string
}

func (a *authFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.tokensFile, "auth-tokens-file", "", "file of admitted bearer tokens' SHA-256 hashes, one per line ('heed token new' prints one); reloaded when it changes; every RPC but health and reflection then needs the header 'Authorization: Bearer TOKEN'")
	fs.BoolVar(&a.insecureNoAuth, "insecure-no-auth", false, "serve on a non-loopback address without --auth-tokens-file (anyone who reaches the port may send commands)")
	fs.StringVar(&a.clientCA, "client-ca", "", "PEM CA file: clients must present a certificate it signed (mutual TLS; needs --tls-cert)")
	fs.StringVar(&a.tlsCert, "tls-cert", "", "PEM certificate (chain) to serve TLS with, reloaded when it changes; with --tls-key")
	fs.StringVar(&a.tlsKey, "tls-key", "", "PEM key of --tls-cert")
}

func (k *kafkaFlags) brokerList() []string {
	var out []string
	for _, b := range strings.Split(k.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// dbFlags are the flags of every verb that talks to Postgres.
type dbFlags struct {
	dom    *heed.Domain
	url    string
	schema string
}

func (d *dbFlags) register(fs *flag.FlagSet, urlDefault, urlUsage string) {
	fs.StringVar(&d.url, "database-url", urlDefault, urlUsage)
	fs.StringVar(&d.schema, "schema", d.dom.DefaultSchema(), "Postgres schema holding every heed table")
}

// logFlags configure the process's slog logger.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *flag.FlagSet) { l.registerLevel(fs, "info") }

// registerLevel registers the flags with level as the default log level.
func (l *logFlags) registerLevel(fs *flag.FlagSet, level string) {
	fs.StringVar(&l.level, "log-level", level, "debug, info, warn or error")
	fs.StringVar(&l.format, "log-format", "auto", "auto (text on a terminal, JSON otherwise), text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", l.level)
	}
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: redactAttr}
	format := l.format
	if format == "auto" {
		format = "json"
		if isTerminal(w) {
			format = "text"
		}
	}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: use auto, text or json", l.format)
}

// shutdownUsage is --shutdown-timeout's help, for serve, apply and dev.
const shutdownUsage = "after SIGTERM or Ctrl-C, how long in-flight work gets to finish (requests answered; batches committed, then offsets committed and the group left) before it is cut off; a second signal exits at once, and the next start resumes from what the database holds"

// registerShutdown registers --shutdown-timeout into d.
func registerShutdown(fs *flag.FlagSet, d *time.Duration) {
	fs.DurationVar(d, "shutdown-timeout", 10*time.Second, shutdownUsage)
}

// applyFlags tune the applier.
type applyFlags struct {
	dom          *heed.Domain
	group        string
	batchRecords int
	batchBytes   int
	batchLinger  time.Duration
	concurrency  int
	// shutdownTimeout is --shutdown-timeout (registered by the verb).
	shutdownTimeout time.Duration
	// sessionTimeout and rebalanceTimeout are the consumer group's.
	sessionTimeout, rebalanceTimeout time.Duration
	// instanceID is the group.instance.id of a static member ("": dynamic).
	instanceID string
	// retention is how long processed events are kept (0: forever), pruned
	// every retentionInterval.
	retention, retentionInterval time.Duration
	// groupProtocol is classic or consumer (KIP-848).
	groupProtocol string
	// stallTimeout is applier.Config.StallTimeout.
	stallTimeout time.Duration
}

func (a *applyFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&a.group, "group", a.dom.DefaultGroup(), "the applier's Kafka consumer group")
	fs.DurationVar(&a.sessionTimeout, "group-session-timeout", 10*time.Second, "how long the group waits for an applier that stopped heartbeating (killed, host lost) before its partitions move to the others")
	fs.StringVar(&a.instanceID, "group-instance-id", "", "a stable ID for this applier, unique in the group, to make it a static member: restarted with the same ID within the session timeout it gets its partitions back without a rebalance; it does not leave the group when it stops")
	fs.DurationVar(&a.rebalanceTimeout, "group-rebalance-timeout", 0, "how long a rebalance waits for every applier to rejoin, finishing in-flight batches; above --shutdown-timeout (default: --shutdown-timeout + 20s)")
	fs.StringVar(&a.groupProtocol, "group-protocol", "consumer", "consumer group protocol: classic (client-side assignment, rebalances stop the group) or consumer (KIP-848, Kafka 4.0+: the coordinator assigns, members come and go without stopping the others; the session timeout is then the broker's group.consumer.session.timeout.ms)")
	fs.DurationVar(&a.retention, "retention", retention.DefaultRetention, "the dedup window: a command retried within it (in record time) is a duplicate, later a new command; processed events (and their outcomes, for GetCommandResult) older than it are pruned; longer than any client retries; recorded in the projection at first use, and fixed; 0: no window, kept forever (see docs/REPLAY.md)")
	fs.DurationVar(&a.stallTimeout, "stall-timeout", 5*time.Second, "how long a partition this applier owns may have records waiting without its applied position moving before it counts as stalled (heed_applier_stalled_partitions) and, when nothing was fetched for it, its fetch is resumed and re-seeked, then the applier rejoins the group")
	fs.DurationVar(&a.retentionInterval, "retention-interval", time.Hour, "how often the applier prunes processed events older than --retention (one applier of the group at a time)")
	a.registerBatch(fs, 4000, 4<<20)
}

// relayFlags are the flags of the relay that runs inside apply and dev.
type relayFlags struct {
	on   bool
	poll time.Duration
}

func (r *relayFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&r.on, "relay", true, "publish the follow-up events the handlers emit (the outbox) for the partitions this applier owns; turn it off only when heed relay runs instead")
	registerRelayPoll(fs, &r.poll)
}

// registerRelayPoll registers --relay-poll.
func registerRelayPoll(fs *flag.FlagSet, d *time.Duration) {
	fs.DurationVar(d, "relay-poll", 2*time.Second, "how often the relay looks for unsent follow-ups when no commit woke it")
}

// registerBatch registers the batch limits alone, with their defaults.
func (a *applyFlags) registerBatch(fs *flag.FlagSet, records, bytes int) {
	fs.IntVar(&a.batchRecords, "batch-records", records, "most records applied in one database transaction")
	fs.IntVar(&a.batchBytes, "batch-bytes", bytes, "most record bytes applied in one database transaction")
	fs.DurationVar(&a.batchLinger, "batch-linger", 0, "how long a partition waits for more records before applying a small batch")
	fs.IntVar(&a.concurrency, "apply-concurrency", 4, "most partitions applying a batch at once, each in its own transaction (more than the database's spare cores makes them contend)")
}

const lingerUsage = "how long the producer waits for more commands to share a produce request (0: send each at once)"

// producerLinger is ingest.Config.Linger for --produce-linger d, where 0
// means no lingering (in ingest.Config, 0 means the default).
func producerLinger(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}

// serveFlags tune the command and query server.
type serveFlags struct {
	listen         string
	partitions     int
	produceLinger  time.Duration
	compression    string
	produceTimeout time.Duration
	readWaitMax    time.Duration

	maxRequestBytes int
	// corsOrigins is --cors-allowed-origins, comma-separated (corsList).
	corsOrigins string
	// shutdownTimeout is --shutdown-timeout (registered by the verb).
	shutdownTimeout time.Duration
}

func (s *serveFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.listen, "listen", defaultListen, "address to serve Connect, gRPC and gRPC-Web on")
	fs.IntVar(&s.partitions, "partitions", defaultPartitions, "partitions of the topic when heed creates it")
	fs.DurationVar(&s.produceLinger, "produce-linger", ingest.DefaultLinger, lingerUsage)
	fs.StringVar(&s.compression, "compression", "none", "record batch compression: none, gzip, snappy, lz4 or zstd")
	fs.DurationVar(&s.produceTimeout, "produce-timeout", 10*time.Second, "longest wait for the broker's ack before a command fails with unavailable")
	fs.DurationVar(&s.readWaitMax, "read-wait-max", 5*time.Second, "longest a read with a consistency_token waits for its write to be applied")
	fs.IntVar(&s.maxRequestBytes, "max-request-bytes", ingest.DefaultMaxRequestBytes, "largest request message accepted, in bytes after decompression (larger: resource_exhausted)")
	fs.StringVar(&s.corsOrigins, "cors-allowed-origins", "", "comma-separated origins whose web pages may call the services from a browser (CORS), e.g. https://app.example.com,http://localhost:5173; one * wildcard per origin (https://*.example.com), or * for any page (only with --auth-tokens-file); empty: none (browsers refuse pages on other origins)")
}

// corsList is --cors-allowed-origins as a list (nil when empty).
func (s *serveFlags) corsList() []string {
	var out []string
	for _, o := range strings.Split(s.corsOrigins, ",") {
		if o = strings.TrimSpace(o); o != "" {
			out = append(out, o)
		}
	}
	return out
}
