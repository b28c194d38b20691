package deploy_test

import (
	"encoding/base64"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
)

// This file derives what docker-compose.yml makes, by meaning: the Kafka
// cluster its brokers' environment describes (node IDs, voters, listeners and
// their protocols, what each advertises and publishes, where the logs live,
// replication against the brokers there are), where heed's services listen
// and what their health checks and clients ask, and Postgres's data. check
// returns every way the file would fail: `docker compose up` that does not
// start, a service never healthy, data lost with its container, an address
// nobody can reach.

// The apache/kafka image's layout and defaults (its documented docker
// examples): the tools under /opt/kafka/bin, the logs in
// /tmp/kraft-combined-logs unless KAFKA_LOG_DIRS says otherwise.
const (
	kafkaBin           = "/opt/kafka/bin/"
	kafkaDefaultLogDir = "/tmp/kraft-combined-logs"
)

// Kafka's own defaults for the settings check compares, used when the
// environment leaves one out.
var kafkaDefaults = map[string]int{
	"KAFKA_DEFAULT_REPLICATION_FACTOR":               1,
	"KAFKA_MIN_INSYNC_REPLICAS":                      1,
	"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         3,
	"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": 3,
	"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            2,
}

// Ports `heed dev` takes on the host by default (its server, broker and
// metrics; the local Postgres it uses, or the private one it starts): a
// compose default on one of them fails `docker compose up` next to it.
var devPorts = map[string]string{
	"8080": "heed dev's server (--listen)",
	"9092": "heed dev's broker (--broker-listen)",
	"9464": "heed dev's and serve's metrics (--metrics-listen)",
	"9465": "apply's metrics (--metrics-listen)",
	"9466": "relay's metrics (--metrics-listen)",
	"5432": "a local Postgres (and heed dev's database)",
	"5433": "heed dev's private Postgres",
}

type listener struct {
	name string
	host string
	port int
}

type voter struct {
	id   int
	host string
	port int
	raw  string
}

// broker is one Kafka service as its environment and container make it.
type broker struct {
	svc         types.ServiceConfig
	name        string
	nodeID      int
	roles       []string
	listeners   []listener
	protocols   map[string]string // listener name -> security protocol
	controllers []string
	interBroker string
	advertised  []listener
	voters      []voter
	clusterID   string
	logDirs     []string
}

func (b *broker) listener(name string) (listener, bool) {
	for _, l := range b.listeners {
		if l.name == name {
			return l, true
		}
	}
	return listener{}, false
}

func (b *broker) isController(name string) bool { return slices.Contains(b.controllers, name) }

func envOf(s types.ServiceConfig, key string) (string, bool) {
	v, ok := s.Environment[key]
	if !ok || v == nil {
		return "", false
	}
	return *v, true
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func hostPort(s string) (string, int, error) {
	h, p, err := net.SplitHostPort(s)
	if err != nil {
		return "", 0, err
	}
	n, err := strconv.Atoi(p)
	if err != nil || n <= 0 || n > 65535 {
		return "", 0, fmt.Errorf("port %q", p)
	}
	return h, n, nil
}

// parseListeners reads NAME://host:port,... (KAFKA_LISTENERS, KAFKA_ADVERTISED_LISTENERS).
func parseListeners(key, s string) ([]listener, []string) {
	var out []listener
	var errs []string
	for _, f := range splitList(s) {
		name, addr, ok := strings.Cut(f, "://")
		if !ok {
			errs = append(errs, fmt.Sprintf("%s entry %q is not NAME://host:port", key, f))
			continue
		}
		h, p, err := hostPort(addr)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s entry %q: %v", key, f, err))
			continue
		}
		out = append(out, listener{name: name, host: h, port: p})
	}
	return out, errs
}

// clusterIDProblem says why id is not what `kafka-storage.sh format` takes:
// a UUID, 16 bytes, as 22 characters of base64url without padding.
func clusterIDProblem(id string) string {
	b, err := base64.RawURLEncoding.DecodeString(id)
	switch {
	case id == "":
		return "CLUSTER_ID unset: the image cannot format the storage"
	case err != nil || len(id) != 22 || len(b) != 16:
		return fmt.Sprintf("CLUSTER_ID %q is not a base64url UUID (16 bytes, 22 characters; `kafka-storage.sh random-uuid` prints one)", id)
	case strings.Trim(string(b), "\x00") == "":
		return fmt.Sprintf("CLUSTER_ID %q is the zero UUID, which Kafka reserves", id)
	}
	return ""
}

// volumeAt is the named volume s mounts at dir or above it, "" if none.
func volumeAt(p *types.Project, s types.ServiceConfig, dir string) string {
	dir = path.Clean(dir)
	for _, v := range s.Volumes {
		if v.Type != types.VolumeTypeVolume || v.Source == "" {
			continue
		}
		t := path.Clean(v.Target)
		if dir == t || strings.HasPrefix(dir, t+"/") {
			if _, declared := p.Volumes[v.Source]; declared {
				return v.Source
			}
		}
	}
	return ""
}

// flagValue is the value of --name in a heed command (--name v or --name=v).
func flagValue(cmd []string, name string) (string, bool) {
	for i, a := range cmd {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		a = strings.TrimLeft(a, "-")
		if a == name && i+1 < len(cmd) {
			return cmd[i+1], true
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// heedEntrypoint is the heed binary's path in the image (the Dockerfile's
// ENTRYPOINT), what heed's health checks must run.
func heedEntrypoint() (string, error) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^ENTRYPOINT \["([^"]+)"`).FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("the Dockerfile has no ENTRYPOINT [\"...\"]")
	}
	return string(m[1]), nil
}

// heedDefaults are the listen addresses heed's verbs take without the flag
// (cli: defaultListen, obsFlags.register).
var heedDefaults = map[string]map[string]string{
	"serve": {"listen": "127.0.0.1:8080", "metrics-listen": "127.0.0.1:9464"},
	"apply": {"metrics-listen": "127.0.0.1:9465"},
	"relay": {"metrics-listen": "127.0.0.1:9466"},
}

// check returns what is wrong with p, each problem a sentence naming the
// service, the setting and what breaks.
func check(p *types.Project) []string {
	var out []string
	bad := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }

	// The brokers, each parsed from its environment.
	var brokers []*broker
	names := p.ServiceNames()
	slices.Sort(names)
	for _, n := range names {
		s := p.Services[n]
		if !strings.HasPrefix(s.Image, "apache/kafka:") {
			continue
		}
		b := &broker{svc: s, name: n, protocols: map[string]string{}}
		brokers = append(brokers, b)
		id, _ := envOf(s, "KAFKA_NODE_ID")
		var err error
		if b.nodeID, err = strconv.Atoi(id); err != nil || b.nodeID < 0 {
			bad("%s: KAFKA_NODE_ID %q is not a node ID", n, id)
		}
		roles, _ := envOf(s, "KAFKA_PROCESS_ROLES")
		b.roles = splitList(roles)
		if !slices.Contains(b.roles, "broker") || !slices.Contains(b.roles, "controller") {
			bad("%s: KAFKA_PROCESS_ROLES %q: each of these brokers must be broker and controller (the quorum is the three of them)", n, roles)
		}
		ls, _ := envOf(s, "KAFKA_LISTENERS")
		var errs []string
		b.listeners, errs = parseListeners("KAFKA_LISTENERS", ls)
		for _, e := range errs {
			bad("%s: %s", n, e)
		}
		seenName, seenPort := map[string]bool{}, map[int]string{}
		for _, l := range b.listeners {
			if seenName[l.name] {
				bad("%s: KAFKA_LISTENERS names %s twice", n, l.name)
			}
			if o, dup := seenPort[l.port]; dup {
				bad("%s: KAFKA_LISTENERS: %s and %s both on port %d", n, o, l.name, l.port)
			}
			seenName[l.name], seenPort[l.port] = true, l.name
		}
		pm, _ := envOf(s, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP")
		for _, f := range splitList(pm) {
			name, proto, ok := strings.Cut(f, ":")
			if !ok || !slices.Contains([]string{"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"}, proto) {
				bad("%s: KAFKA_LISTENER_SECURITY_PROTOCOL_MAP entry %q is not NAME:PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)", n, f)
				continue
			}
			b.protocols[name] = proto
		}
		for _, l := range b.listeners {
			if _, ok := b.protocols[l.name]; !ok {
				bad("%s: listener %s has no security protocol in KAFKA_LISTENER_SECURITY_PROTOCOL_MAP %q: the broker refuses to start", n, l.name, pm)
			}
		}
		cn, ok := envOf(s, "KAFKA_CONTROLLER_LISTENER_NAMES")
		b.controllers = splitList(cn)
		if !ok || len(b.controllers) == 0 {
			bad("%s: KAFKA_CONTROLLER_LISTENER_NAMES unset: a KRaft controller must name its listener; the broker refuses to start", n)
		}
		for _, c := range b.controllers {
			if _, ok := b.listener(c); !ok {
				bad("%s: controller listener %s (KAFKA_CONTROLLER_LISTENER_NAMES) is not in KAFKA_LISTENERS %q", n, c, ls)
			}
		}
		b.interBroker, ok = envOf(s, "KAFKA_INTER_BROKER_LISTENER_NAME")
		if !ok {
			b.interBroker = "PLAINTEXT" // Kafka's default: security.inter.broker.protocol's name
		}
		if _, ok := b.listener(b.interBroker); !ok {
			bad("%s: KAFKA_INTER_BROKER_LISTENER_NAME %s is not a listener of KAFKA_LISTENERS %q: the broker refuses to start", n, b.interBroker, ls)
		} else if b.isController(b.interBroker) {
			bad("%s: KAFKA_INTER_BROKER_LISTENER_NAME %s is the controller listener", n, b.interBroker)
		}
		al, _ := envOf(s, "KAFKA_ADVERTISED_LISTENERS")
		b.advertised, errs = parseListeners("KAFKA_ADVERTISED_LISTENERS", al)
		for _, e := range errs {
			bad("%s: %s", n, e)
		}
		voters, _ := envOf(s, "KAFKA_CONTROLLER_QUORUM_VOTERS")
		for _, f := range splitList(voters) {
			idS, addr, ok := strings.Cut(f, "@")
			id, err := strconv.Atoi(idS)
			h, port, herr := hostPort(addr)
			if !ok || err != nil || herr != nil {
				bad("%s: KAFKA_CONTROLLER_QUORUM_VOTERS entry %q is not id@host:port", n, f)
				continue
			}
			b.voters = append(b.voters, voter{id: id, host: h, port: port, raw: f})
		}
		b.clusterID, _ = envOf(s, "CLUSTER_ID")
		if msg := clusterIDProblem(b.clusterID); msg != "" {
			bad("%s: %s", n, msg)
		}
		dirs, ok := envOf(s, "KAFKA_LOG_DIRS")
		if !ok {
			dirs = kafkaDefaultLogDir
		}
		b.logDirs = splitList(dirs)
	}
	if len(brokers) == 0 {
		return append(out, "no apache/kafka service")
	}

	// The cluster they form.
	byID := map[int]*broker{}
	for _, b := range brokers {
		if o, dup := byID[b.nodeID]; dup {
			bad("%s and %s: both KAFKA_NODE_ID %d", o.name, b.name, b.nodeID)
		}
		byID[b.nodeID] = b
		if b.clusterID != brokers[0].clusterID {
			bad("%s: CLUSTER_ID %q, %s's is %q: brokers of two clusters never form one", b.name, b.clusterID, brokers[0].name, brokers[0].clusterID)
		}
		if v, v0 := fmt.Sprint(b.voters), fmt.Sprint(brokers[0].voters); v != v0 {
			bad("%s: KAFKA_CONTROLLER_QUORUM_VOTERS differ from %s's", b.name, brokers[0].name)
		}
	}
	voterIDs := map[int]bool{}
	for _, v := range brokers[0].voters {
		voterIDs[v.id] = true
		b, ok := byID[v.id]
		switch {
		case !ok:
			bad("voter %s: no broker has KAFKA_NODE_ID %d: the quorum never has a majority", v.raw, v.id)
		case v.host != b.name:
			bad("voter %s: node %d is %s, not %s (node IDs and voters disagree: the controllers never elect a leader)", v.raw, v.id, b.name, v.host)
		default:
			var ports []int
			for _, c := range b.controllers {
				if l, ok := b.listener(c); ok {
					ports = append(ports, l.port)
				}
			}
			if !slices.Contains(ports, v.port) {
				bad("voter %s: %s's controller listener is on port(s) %v, not %d: the quorum cannot reach it", v.raw, b.name, ports, v.port)
			}
		}
	}
	for _, b := range brokers {
		if !voterIDs[b.nodeID] {
			v, _ := envOf(brokers[0].svc, "KAFKA_CONTROLLER_QUORUM_VOTERS")
			bad("%s: node %d is not in KAFKA_CONTROLLER_QUORUM_VOTERS %q", b.name, b.nodeID, v)
		}
	}

	// What each broker advertises, publishes, checks and stores.
	logVolumes := map[string]string{}
	for _, b := range brokers {
		published := map[int]types.ServicePortConfig{} // published host port -> mapping
		for _, pc := range b.svc.Ports {
			if port, err := strconv.Atoi(pc.Published); err == nil {
				published[port] = pc
			}
			if !slices.ContainsFunc(b.listeners, func(l listener) bool { return uint32(l.port) == pc.Target && !b.isController(l.name) }) {
				bad("%s: publishes container port %d, where no client listener of KAFKA_LISTENERS listens", b.name, pc.Target)
			}
		}
		advertisesInter := false
		for _, a := range b.advertised {
			l, ok := b.listener(a.name)
			if !ok {
				bad("%s: KAFKA_ADVERTISED_LISTENERS names %s, not a listener of KAFKA_LISTENERS", b.name, a.name)
				continue
			}
			if a.name == b.interBroker {
				advertisesInter = true
			}
			if a.host == b.name || a.host == b.svc.Hostname || a.host == b.svc.ContainerName {
				// Reached on the compose network: the container's own port.
				if a.port != l.port {
					bad("%s: advertises %s on %s:%d, but listener %s listens on port %d", b.name, a.name, a.host, a.port, a.name, l.port)
				}
				continue
			}
			// Reached from the host: a published port must lead to the listener.
			pc, ok := published[a.port]
			switch {
			case !ok:
				bad("%s: advertises %s as %s:%d, but publishes no host port %d (clients from the host are sent where nothing listens)", b.name, a.name, a.host, a.port, a.port)
			case pc.Target != uint32(l.port):
				bad("%s: advertises %s as %s:%d, but host port %d leads to container port %d, not listener %s's %d", b.name, a.name, a.host, a.port, a.port, pc.Target, a.name, l.port)
			case loopback(a.host) && pc.HostIP != "" && !loopback(pc.HostIP):
				bad("%s: advertises %s on %s but publishes on %s", b.name, a.name, a.host, pc.HostIP)
			}
		}
		if !advertisesInter {
			bad("%s: the inter-broker listener %s is not in KAFKA_ADVERTISED_LISTENERS: the brokers cannot reach each other", b.name, b.interBroker)
		}
		// The health check: the image's tool against a client listener.
		hc := b.svc.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 2 {
			bad("%s: no health check: topic-init would run before the broker answers", b.name)
		} else {
			cmd := strings.Join(hc.Test[1:], " ")
			m := regexp.MustCompile(`(\S*kafka-broker-api-versions\.sh)\s.*--bootstrap-server[ =](\S+)`).FindStringSubmatch(cmd)
			if m == nil {
				bad("%s: health check %q does not run kafka-broker-api-versions.sh --bootstrap-server", b.name, cmd)
			} else {
				if m[1] != kafkaBin+"kafka-broker-api-versions.sh" {
					bad("%s: health check runs %s, not the image's %skafka-broker-api-versions.sh: the broker is never healthy", b.name, m[1], kafkaBin)
				}
				h, port, err := hostPort(m[2])
				ok := err == nil && (loopback(h) || h == b.name) &&
					slices.ContainsFunc(b.listeners, func(l listener) bool { return l.port == port && !b.isController(l.name) })
				if !ok {
					bad("%s: health check asks %s, not a client listener of KAFKA_LISTENERS %v: the broker is never healthy", b.name, m[2], b.listeners)
				}
			}
		}
		for _, d := range b.logDirs {
			v := volumeAt(p, b.svc, d)
			if v == "" {
				bad("%s: KAFKA_LOG_DIRS %s is on no named volume of the service: the topic (the source of truth) is lost with the container", b.name, d)
				continue
			}
			if o, shared := logVolumes[v]; shared {
				bad("%s and %s: both keep their logs on volume %s", o, b.name, v)
			}
			logVolumes[v] = b.name
		}
	}

	// Replication against the brokers there are.
	setting := func(key string) int {
		v, ok := envOf(brokers[0].svc, key)
		if !ok {
			return kafkaDefaults[key]
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			bad("%s: %s %q is not a number", brokers[0].name, key, v)
		}
		for _, b := range brokers[1:] {
			if w, _ := envOf(b.svc, key); w != v {
				bad("%s: %s %q, %s's is %q", b.name, key, w, brokers[0].name, v)
			}
		}
		return n
	}
	nb := len(brokers)
	rf := setting("KAFKA_DEFAULT_REPLICATION_FACTOR")
	minISR := setting("KAFKA_MIN_INSYNC_REPLICAS")
	offRF := setting("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR")
	txRF := setting("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR")
	txISR := setting("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR")
	if rf > nb {
		bad("KAFKA_DEFAULT_REPLICATION_FACTOR %d on %d brokers: topics cannot be created", rf, nb)
	}
	if minISR >= rf && rf > 1 || minISR < 1 {
		bad("KAFKA_MIN_INSYNC_REPLICAS %d with replication %d: one broker down stops every acks=all produce", minISR, rf)
	}
	if offRF > nb {
		bad("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR %d on %d brokers: __consumer_offsets is never created and the appliers' group never forms", offRF, nb)
	}
	if txRF > nb {
		bad("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR %d on %d brokers: __transaction_state is never created", txRF, nb)
	}
	if txISR > txRF || txISR < 1 {
		bad("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR %d with its replication factor %d: no transaction can ever commit", txISR, txRF)
	} else if txISR == txRF && txRF > 1 {
		bad("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR %d equals its replication factor: one broker down stops transactions", txISR)
	}

	// Postgres: its data on a volume; what heed's URL names.
	pg, hasPG := p.Services["postgres"]
	if !hasPG {
		bad("no postgres service")
	} else {
		data, ok := envOf(pg, "PGDATA")
		if !ok {
			data = "/var/lib/postgresql/data" // the official image's PGDATA up to 17
		}
		if volumeAt(p, pg, data) == "" {
			bad("postgres: its data directory %s is on no named volume: the projection is lost with the container", data)
		}
		if pg.HealthCheck == nil || pg.HealthCheck.Disable || len(pg.HealthCheck.Test) == 0 {
			bad("postgres: no health check: init would migrate before it answers")
		}
	}
	pgDB, _ := envOf(pg, "POSTGRES_DB")
	pgUser, ok := envOf(pg, "POSTGRES_USER")
	if !ok {
		pgUser = "postgres"
	}
	if pgDB == "" {
		pgDB = pgUser
	}

	// heed's services: their clients' addresses, where they listen, what
	// their health checks ask.
	entry, err := heedEntrypoint()
	if err != nil {
		bad("%v", err)
	}
	for _, n := range names {
		s := p.Services[n]
		if s.Image != "heed:local" {
			continue
		}
		for _, addr := range splitList(func() string { v, _ := envOf(s, "HEED_BROKERS"); return v }()) {
			h, port, err := hostPort(addr)
			found := false
			for _, b := range brokers {
				for _, a := range b.advertised {
					if err == nil && a.host == h && a.port == port && h == b.name {
						found = true
						if b.isController(a.name) || b.protocols[a.name] != "PLAINTEXT" {
							bad("%s: HEED_BROKERS %s is %s's %s listener (%s), which heed without --kafka-tls cannot use", n, addr, b.name, a.name, b.protocols[a.name])
						}
					}
				}
			}
			if !found {
				bad("%s: HEED_BROKERS %s is no address a broker advertises on the compose network: the client bootstraps, then is sent elsewhere", n, addr)
			}
		}
		if dbURL, ok := envOf(s, "HEED_DATABASE_URL"); ok && hasPG {
			u, err := url.Parse(dbURL)
			if err != nil || u.Hostname() != "postgres" || u.Port() != "5432" {
				bad("%s: HEED_DATABASE_URL %q: want the postgres service's port 5432 (postgres:5432)", n, dbURL)
			} else if db := strings.TrimPrefix(u.Path, "/"); db != pgDB || u.User.Username() != pgUser {
				bad("%s: HEED_DATABASE_URL %q: user %s, database %s; the postgres service makes user %s, database %s", n, dbURL, u.User.Username(), db, pgUser, pgDB)
			}
		}
		if len(s.Command) == 0 {
			bad("%s: no command", n)
			continue
		}
		verb := s.Command[0]
		defs, longRunning := heedDefaults[verb]
		if !longRunning {
			continue
		}
		listen := map[string]string{}
		for flagName, def := range defs {
			v, given := flagValue(s.Command, flagName)
			if !given {
				v = def
			}
			h, _, err := hostPort(v)
			switch {
			case err != nil:
				bad("%s: --%s %q: %v", n, flagName, v, err)
			case loopback(h):
				bad("%s: --%s %s listens on loopback inside the container: Prometheus, the other services and the published port cannot reach it; listen on 0.0.0.0", n, flagName, v)
			}
			listen[flagName] = v
		}
		listenPorts := map[uint32]string{}
		for flagName, v := range listen {
			if _, port, err := hostPort(v); err == nil {
				listenPorts[uint32(port)] = "--" + flagName
			}
		}
		for _, pc := range s.Ports {
			if _, ok := listenPorts[pc.Target]; !ok {
				bad("%s: publishes container port %d, where it does not listen (%v)", n, pc.Target, listen)
			}
		}
		hc := s.HealthCheck
		if hc == nil || hc.Disable || len(hc.Test) < 3 {
			bad("%s: no health check", n)
			continue
		}
		if hc.Test[0] != "CMD" || hc.Test[1] != entry || len(hc.Test) < 3 || hc.Test[2] != "healthcheck" {
			bad("%s: health check %v does not run %s healthcheck (the image has no shell)", n, hc.Test, entry)
			continue
		}
		hu, _ := flagValue(hc.Test[2:], "health-url")
		u, err := url.Parse(hu)
		if err != nil || u.Host == "" {
			bad("%s: health check --health-url %q is not a URL", n, hu)
			continue
		}
		if u.Path != "/readyz" {
			bad("%s: health check asks %s, not /readyz: /healthz is always 200, so heed %s shows healthy while it cannot reach Kafka or Postgres", n, u.Path, verb)
		}
		_, mport, _ := hostPort(listen["metrics-listen"])
		if u.Port() != strconv.Itoa(mport) || !loopback(u.Hostname()) {
			bad("%s: health check asks %s, but --metrics-listen is %s: the service is never healthy", n, u.Host, listen["metrics-listen"])
		}
	}

	// Host ports: on loopback, distinct, clear of heed dev's and a local
	// Postgres's.
	used := map[string]string{}
	for _, n := range names {
		for _, pc := range p.Services[n].Ports {
			if pc.Published == "" {
				continue
			}
			if !loopback(pc.HostIP) {
				bad("%s: publishes %s on %q, not 127.0.0.1: a local trial (no tokens, trusted Postgres) open to the network", n, pc.Published, pc.HostIP)
			}
			if o, dup := used[pc.Published]; dup {
				bad("%s and %s: both publish host port %s", o, n, pc.Published)
			}
			used[pc.Published] = n
			if what, clash := devPorts[pc.Published]; clash {
				bad("%s: publishes host port %s, %s: `docker compose up` fails next to it", n, pc.Published, what)
			}
		}
	}
	return out
}
