package devstack

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// DefaultBrokerListen is the address the broker listens on when
// BrokerConfig.Listen is empty: the usual Kafka port on loopback.
const DefaultBrokerListen = "127.0.0.1:9092"

// brokerCloseTimeout bounds Broker.Close.
const brokerCloseTimeout = 10 * time.Second

// BrokerConfig configures StartBroker. The zero value is a usable in-memory
// broker on DefaultBrokerListen.
type BrokerConfig struct {
	// Listen is the host:port to serve the Kafka protocol on, e.g.
	// "127.0.0.1:9092". Port 0 picks a free port (see Broker.Addrs). Empty
	// means DefaultBrokerListen. A wildcard host ("0.0.0.0", "[::]") binds
	// all interfaces but advertises 127.0.0.1 in metadata, so remote
	// clients need a concrete host here.
	Listen string

	// DataDir persists the broker's state under this directory (created if
	// needed) and reloads it on the next start. Empty keeps everything in
	// memory. Only one Broker may use a DataDir at a time, and StartBroker
	// enforces it: before it binds Listen or reads the directory it locks
	// DataDir (see LockDataDir) for the broker's lifetime, recording Program,
	// the process ID and the listen address in DataDir/LOCK. Another holder,
	// in this process or another, makes StartBroker fail with a
	// *DataDirInUseError naming it. Close releases the lock; the kernel does
	// when the process dies, so a crash leaves no stale lock.
	DataDir string

	// Lock, if set, is a lock the caller already holds on DataDir (from
	// LockDataDir, taken before it started anything else that belongs to the
	// directory). StartBroker then takes no lock of its own, records the
	// broker's address in this one and leaves releasing it to the caller,
	// after Close.
	Lock *DataDirLock

	// Program names this process in DataDir's lock file, e.g. "heed broker".
	// Empty means the executable's base name. Unused when Lock is set.
	Program string

	// Partitions is the partition count of auto-created topics and of
	// CreateTopics requests that ask for the default (-1). Zero or less
	// keeps kfake's default of 10.
	Partitions int32

	// Logger receives kfake's log lines (its info and debug lines at
	// slog.LevelDebug). Nil discards them.
	Logger *slog.Logger

	// Users, when set, turn SASL authentication on: clients must log in as
	// one of them (each a superuser).
	Users []SASLUser
	// TLS, when set, serves the Kafka protocol over TLS only.
	TLS *tls.Config
}

// SASLUser is a user of a broker with SASL on. Mechanism is PLAIN,
// SCRAM-SHA-256 or SCRAM-SHA-512.
type SASLUser struct {
	Mechanism, User, Password string
}

// Broker is an embedded single-node Kafka broker (franz-go's kfake) served
// over real TCP. Topics are auto-created on first use when the client asks
// for it (kgo.AllowAutoTopicCreation()), like Kafka's default
// auto.create.topics.enable=true.
//
// Persistence (BrokerConfig.DataDir), as implemented by kfake's
// persist.go/persist_fs.go:
//
//   - Records are appended to per-partition segment files (.dat/.idx) as
//     they are produced, so they survive a process crash (kill -9) as long
//     as the OS survives; a start without a clean shutdown replays the
//     segments. Without kfake's SyncWrites option (not exposed here)
//     nothing fsyncs segments, groups.log or pids.log, not even segment
//     roll or Close (kfake's SyncWrites doc claims otherwise; the code
//     passes syncWrites to every Sync), so an OS crash or power loss can
//     lose recent data. Fine for development.
//   - Topics, partition counts and topic configs (topics.json), broker
//     configs, ACLs, SASL users and quotas are rewritten whenever they
//     change through the admin API (CreateTopics, AlterConfigs, ...).
//     kfake does NOT write topics.json when a Metadata request auto-creates
//     a topic, only on Close, so after a crash such a topic and its records
//     would be gone; StartBroker works around this by creating those topics
//     through Cluster.CreateTopic first (see persistAutoCreatedTopics).
//   - Committed consumer-group offsets and group metadata are appended to
//     groups.log on every commit, so they persist too; idempotent and
//     transactional producer IDs go to pids.log. Committed offsets still
//     expire after offsets.retention.minutes (default 7 days) once a group
//     is empty, as in Kafka.
//   - Close flushes: it stops accepting connections, applies any
//     OffsetCommit requests still queued, then writes a full snapshot (per
//     partition snapshot.json with high watermark and segment list,
//     compacted groups.log and pids.log, topics.json, ...) plus live group
//     membership (session_state.json, consumed on the next start so
//     members can rejoin without a full rebalance), and closes the files.
//     The JSON files are written to a temp file, fsynced and renamed; a
//     start without them (after a crash) rebuilds partitions by scanning
//     the segments.
//   - The listen address is not persisted: a restart may use another port.
//     Seed options only apply to an empty DataDir.
//
// Concurrency: all methods are safe for concurrent use.
type Broker struct {
	cluster   *kfake.Cluster
	addrs     []string
	logger    *slog.Logger
	lock      *DataDirLock // taken by StartBroker; nil without DataDir or with BrokerConfig.Lock
	closeOnce sync.Once
}

// StartBroker locks cfg.DataDir (unless cfg.Lock holds it), binds
// cfg.Listen, loads cfg.DataDir if it holds state from an earlier run, and
// serves the Kafka protocol until Close.
//
// Errors: *DataDirInUseError when another process or Broker holds DataDir
// (checked before anything is bound or read); a *ListenError when Listen is
// malformed, in use or not bindable here; a Lock for another directory; an
// unreadable or incompatible DataDir (the message suggests moving it
// aside). ctx is only checked before starting: kfake's startup cannot be
// interrupted.
func StartBroker(ctx context.Context, cfg BrokerConfig) (*Broker, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("broker: not started: %w", err)
	}
	logger := orDiscard(cfg.Logger)
	listen := cfg.Listen
	if listen == "" {
		listen = DefaultBrokerListen
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, &ListenError{Addr: listen, Err: err}
	}
	lock, ownLock, err := brokerLock(cfg, listen)
	if err != nil {
		return nil, err
	}
	release := func() {
		if ownLock {
			lock.Release()
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		release()
		return nil, &ListenError{Addr: listen, Err: err}
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		ln = advertisedListener{Listener: ln, addr: loopbackAddr(ln.Addr())}
	}

	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.ListenFn(firstListener(ln)),
		kfake.AllowAutoTopicCreation(),
		kfake.WithLogger(kfakeLogger{logger}),
		// KIP-848 groups (heed apply --group-protocol consumer) time a dead
		// member out broker-side: as fast as heed's classic default.
		kfake.BrokerConfigs(map[string]string{"group.consumer.session.timeout.ms": "10000", "group.consumer.heartbeat.interval.ms": "2000"}),
	}
	if cfg.Partitions > 0 {
		opts = append(opts, kfake.DefaultNumPartitions(int(cfg.Partitions)))
	}
	if cfg.DataDir != "" {
		opts = append(opts, kfake.DataDir(cfg.DataDir))
	}
	if len(cfg.Users) > 0 {
		opts = append(opts, kfake.EnableSASL())
		for _, u := range cfg.Users {
			opts = append(opts, kfake.Superuser(u.Mechanism, u.User, u.Password))
		}
	}
	if cfg.TLS != nil {
		opts = append(opts, kfake.TLS(cfg.TLS))
	}
	cluster, err := kfake.NewCluster(opts...)
	if err != nil {
		ln.Close()
		release()
		if cfg.DataDir != "" {
			return nil, fmt.Errorf("broker: start with data dir %s: %w; if the directory is corrupt or from an incompatible version, move it aside to start empty", cfg.DataDir, err)
		}
		return nil, fmt.Errorf("broker: start: %w", err)
	}
	if cfg.DataDir != "" {
		persistAutoCreatedTopics(cluster)
	}
	b := &Broker{cluster: cluster, addrs: cluster.ListenAddrs(), logger: logger}
	if ownLock {
		b.lock = lock
	}
	if lock != nil {
		if err := lock.setBroker(b.addrs[0]); err != nil {
			b.Close()
			return nil, fmt.Errorf("broker: %w", err)
		}
	}
	logger.Info("broker started", "addrs", b.addrs, "data_dir", cfg.DataDir)
	return b, nil
}

// brokerLock returns the lock on cfg.DataDir: cfg.Lock, or one taken now
// (own), or nil without a DataDir.
func brokerLock(cfg BrokerConfig, listen string) (lock *DataDirLock, own bool, err error) {
	switch {
	case cfg.DataDir == "" && cfg.Lock != nil:
		return nil, false, fmt.Errorf("broker: BrokerConfig.Lock is set (for %s) but DataDir is empty; set DataDir to the locked directory", cfg.Lock.Dir())
	case cfg.DataDir == "":
		return nil, false, nil
	case cfg.Lock != nil:
		if filepath.Clean(cfg.Lock.Dir()) != filepath.Clean(cfg.DataDir) {
			return nil, false, fmt.Errorf("broker: BrokerConfig.Lock holds %s, not DataDir %s; lock DataDir itself", cfg.Lock.Dir(), cfg.DataDir)
		}
		return cfg.Lock, false, nil
	}
	lock, err = LockDataDir(cfg.DataDir, Holder{Program: cfg.Program, Broker: listen})
	if err != nil {
		return nil, false, fmt.Errorf("broker: %w", err)
	}
	return lock, true, nil
}

// ListenError is StartBroker's error when it cannot listen on
// BrokerConfig.Listen: the address is malformed, in use, or not one this
// machine can bind. Err is the cause; InUse tells the second case apart.
type ListenError struct {
	Addr string
	Err  error
}

// InUse reports whether another socket has the address already.
func (e *ListenError) InUse() bool { return isAddrInUse(e.Err) }

// Problem says what is wrong without a fix, for callers that name their
// own setting in it.
func (e *ListenError) Problem() string {
	if e.InUse() {
		return fmt.Sprintf("broker: listen %s: address already in use (is another heed dev or heed broker running?)", e.Addr)
	}
	return fmt.Sprintf("broker: listen %s: %v", e.Addr, e.Err)
}

func (e *ListenError) Error() string {
	if e.InUse() {
		return e.Problem() + "; set BrokerConfig.Listen to a free address"
	}
	return fmt.Sprintf("%s; set BrokerConfig.Listen to a host:port this machine can bind, e.g. %s", e.Problem(), DefaultBrokerListen)
}

func (e *ListenError) Unwrap() error { return e.Err }

// Addrs returns the host:port seed addresses to pass to kgo.SeedBrokers.
func (b *Broker) Addrs() []string {
	return append([]string(nil), b.addrs...)
}

// Cluster returns the underlying kfake cluster, for tests that inject
// faults (Control, MoveTopicPartition, ...). Do not Close it directly; use
// Broker.Close.
func (b *Broker) Cluster() *kfake.Cluster {
	return b.cluster
}

// Close stops the broker and, with a DataDir, flushes its state to disk
// (see Broker) and then releases the lock StartBroker took on it. It waits
// at most 10 seconds, logging a warning if the flush has not finished by
// then; the lock is released only once it has. Calling Close again does
// nothing.
func (b *Broker) Close() {
	b.closeOnce.Do(func() {
		done := make(chan struct{})
		go func() {
			defer close(done)
			b.cluster.Close()
			if b.lock != nil {
				b.lock.Release()
			}
		}()
		select {
		case <-done:
			b.logger.Info("broker stopped", "addrs", b.addrs)
		case <-time.After(brokerCloseTimeout):
			b.logger.Warn("broker: close did not finish in time; persisted state may be incomplete",
				"addrs", b.addrs, "timeout", brokerCloseTimeout)
		}
	})
}

// persistAutoCreatedTopics works around kfake not persisting topics it
// auto-creates from a Metadata request until Close: after a crash their
// records would sit in segment files of a topic the restarted broker does
// not know. A control function observes Metadata requests that allow
// auto-creation and creates the missing topics first through
// Cluster.CreateTopic, which persists topics.json like CreateTopics does.
// The run loop serves admin calls while a control function runs, and
// returning "not handled" keeps the function and lets kfake answer the
// request as usual.
func persistAutoCreatedTopics(c *kfake.Cluster) {
	c.ControlKey(int16(kmsg.Metadata), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mr, ok := req.(*kmsg.MetadataRequest)
		if !ok || !mr.AllowAutoTopicCreation {
			return nil, nil, false
		}
		for _, rt := range mr.Topics {
			if rt.Topic == nil || *rt.Topic == "" || rt.TopicID != ([16]byte{}) {
				continue
			}
			if c.TopicInfo(*rt.Topic) == nil {
				// An error (invalid name, created concurrently) is left
				// for the Metadata handler to report or ignore.
				_ = c.CreateTopic(*rt.Topic, -1, nil)
			}
		}
		return nil, nil, false
	})
}

// firstListener returns a kfake ListenFn that hands out ln on the first
// call (kfake always asks for 127.0.0.1:port) and binds normally after that
// (Cluster.AddNode in fault tests).
func firstListener(ln net.Listener) func(network, address string) (net.Listener, error) {
	var once sync.Once
	return func(network, address string) (net.Listener, error) {
		var first net.Listener
		once.Do(func() { first = ln })
		if first != nil {
			return first, nil
		}
		return net.Listen(network, address)
	}
}

// advertisedListener overrides Addr, which kfake advertises in metadata.
type advertisedListener struct {
	net.Listener
	addr net.Addr
}

func (l advertisedListener) Addr() net.Addr { return l.addr }

// loopbackAddr returns a with its IP replaced by 127.0.0.1.
func loopbackAddr(a net.Addr) net.Addr {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return a
	}
	return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: tcp.Port}
}

// kfakeLogger adapts slog to kfake.Logger. kfake logs every request at
// info, so info and debug both map to slog debug.
type kfakeLogger struct{ l *slog.Logger }

func (k kfakeLogger) Logf(level kfake.LogLevel, format string, args ...any) {
	var lvl slog.Level
	switch level {
	case kfake.LogLevelError:
		lvl = slog.LevelError
	case kfake.LogLevelWarn:
		lvl = slog.LevelWarn
	case kfake.LogLevelNone:
		return
	default:
		lvl = slog.LevelDebug
	}
	ctx := context.Background()
	if !k.l.Enabled(ctx, lvl) {
		return
	}
	k.l.Log(ctx, lvl, fmt.Sprintf(format, args...), "component", "kfake")
}
