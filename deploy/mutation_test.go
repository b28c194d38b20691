package deploy_test

import (
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/types"
)

var kafkas = []string{"kafka-1", "kafka-2", "kafka-3"}

// edit replaces old by new in svc's environment variable key; the mutation
// fails the test if the file no longer has old there (it would test nothing).
func edit(t *testing.T, p *types.Project, svc, key, old, new string) {
	t.Helper()
	v, ok := envOf(p.Services[svc], key)
	if !ok || !strings.Contains(v, old) {
		t.Fatalf("mutation: %s's %s=%q has no %q", svc, key, v, old)
	}
	v = strings.Replace(v, old, new, 1)
	p.Services[svc].Environment[key] = &v
}

// editAll edits key on the three brokers: the file sets it once, in x-kafka-env.
func editAll(t *testing.T, p *types.Project, key, old, new string) {
	t.Helper()
	for _, k := range kafkas {
		edit(t, p, k, key, old, new)
	}
}

// editTest replaces old by new in svc's health check command.
func editTest(t *testing.T, p *types.Project, svc, old, new string) {
	t.Helper()
	s := p.Services[svc]
	hc := *s.HealthCheck
	joined := strings.Join(hc.Test, "\x00")
	if !strings.Contains(joined, old) {
		t.Fatalf("mutation: %s's health check %v has no %q", svc, hc.Test, old)
	}
	hc.Test = strings.Split(strings.Replace(joined, old, new, 1), "\x00")
	s.HealthCheck = &hc
	p.Services[svc] = s
}

// editCommand replaces the argument old of svc's command by new.
func editCommand(t *testing.T, p *types.Project, svc, old, new string) {
	t.Helper()
	s := p.Services[svc]
	cmd := append(types.ShellCommand(nil), s.Command...)
	for i, a := range cmd {
		if a == old {
			cmd[i] = new
			s.Command = cmd
			p.Services[svc] = s
			return
		}
	}
	t.Fatalf("mutation: %s's command %v has no %q", svc, s.Command, old)
}

// mutation is a change to the parsed docker-compose.yml that check must
// report: want is a part of the problem.
type mutation struct {
	name   string
	mutate func(t *testing.T, p *types.Project)
	want   string
}

// mutations break `docker compose up`, leave a service never healthy, lose
// data or collide on a developer's machine. The first twelve are the ones
// issue 29 found passing the earlier key-by-key test; the others are their
// neighbours (its finding 5, and ways the same settings can disagree).
var mutations = []mutation{
	{"EXTERNAL dropped from the security map", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", ",EXTERNAL:PLAINTEXT", "")
	}, "kafka-1: listener EXTERNAL has no security protocol"},
	{"no KAFKA_CONTROLLER_LISTENER_NAMES", func(t *testing.T, p *types.Project) {
		for _, k := range kafkas {
			delete(p.Services[k].Environment, "KAFKA_CONTROLLER_LISTENER_NAMES")
		}
	}, "kafka-1: KAFKA_CONTROLLER_LISTENER_NAMES unset"},
	{"node IDs swapped", func(t *testing.T, p *types.Project) {
		edit(t, p, "kafka-1", "KAFKA_NODE_ID", "1", "2")
		edit(t, p, "kafka-2", "KAFKA_NODE_ID", "2", "1")
	}, "voter 1@kafka-1:9093: node 1 is kafka-2, not kafka-1"},
	{"broker health check path broken", func(t *testing.T, p *types.Project) {
		for _, k := range kafkas {
			editTest(t, p, k, "/opt/kafka/bin/kafka-broker-api-versions.sh", "/opt/kafka/kafka-broker-api-versions.sh")
		}
	}, "kafka-1: health check runs /opt/kafka/kafka-broker-api-versions.sh, not the image's"},
	{"controller listener moved", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_LISTENERS", "CONTROLLER://:9093", "CONTROLLER://:9094")
	}, "voter 1@kafka-1:9093: kafka-1's controller listener is on port(s) [9094], not 9093"},
	{"bogus inter-broker listener name", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_INTER_BROKER_LISTENER_NAME", "PLAINTEXT", "INTERNAL")
	}, "kafka-1: KAFKA_INTER_BROKER_LISTENER_NAME INTERNAL is not a listener"},
	{"apply health check port not its listen port", func(t *testing.T, p *types.Project) {
		editCommand(t, p, "apply", "0.0.0.0:9465", "0.0.0.0:9466")
	}, "apply: health check asks 127.0.0.1:9465, but --metrics-listen is 0.0.0.0:9466"},
	{"serve's metrics on 127.0.0.1", func(t *testing.T, p *types.Project) {
		editCommand(t, p, "serve", "0.0.0.0:9464", "127.0.0.1:9464")
	}, "serve: --metrics-listen 127.0.0.1:9464 listens on loopback"},
	{"KAFKA_LOG_DIRS not the volume", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_LOG_DIRS", "/var/lib/kafka/data", "/var/lib/kafka/logs")
	}, "kafka-1: KAFKA_LOG_DIRS /var/lib/kafka/logs is on no named volume"},
	{"transaction-log min ISR 4", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "2", "4")
	}, "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR 4 with its replication factor 3"},
	{"Postgres volume removed", func(t *testing.T, p *types.Project) {
		s := p.Services["postgres"]
		if len(s.Volumes) == 0 {
			t.Fatal("mutation: postgres has no volume")
		}
		s.Volumes = nil
		p.Services["postgres"] = s
	}, "postgres: its data directory /var/lib/postgresql/data is on no named volume"},
	{"mismatched advertised port", func(t *testing.T, p *types.Project) {
		edit(t, p, "kafka-2", "KAFKA_ADVERTISED_LISTENERS", "EXTERNAL://127.0.0.1:19093", "EXTERNAL://127.0.0.1:19095")
	}, "kafka-2: advertises EXTERNAL as 127.0.0.1:19095, but publishes no host port 19095"},
	{"heed bootstraps from the host's port", func(t *testing.T, p *types.Project) {
		for _, s := range []string{"topic-init", "init", "serve", "apply"} {
			edit(t, p, s, "HEED_BROKERS", "kafka-1:9092", "kafka-1:19092")
		}
	}, "apply: HEED_BROKERS kafka-1:19092 is no address a broker advertises on the compose network"},
	{"offsets topic replicated on more brokers than there are", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "3", "4")
	}, "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR 4 on 3 brokers"},
	{"apply health check on /healthz", func(t *testing.T, p *types.Project) {
		editTest(t, p, "apply", "/readyz", "/healthz")
	}, "apply: health check asks /healthz, not /readyz"},
	{"CLUSTER_ID not a base64 UUID", func(t *testing.T, p *types.Project) {
		for _, k := range kafkas {
			v := "hEEd-kRaft-cLuster-0001"
			p.Services[k].Environment["CLUSTER_ID"] = &v
		}
	}, `kafka-1: CLUSTER_ID "hEEd-kRaft-cLuster-0001" is not a base64url UUID`},
	{"serve published on heed dev's port", func(t *testing.T, p *types.Project) {
		s := p.Services["serve"]
		s.Ports = append([]types.ServicePortConfig(nil), s.Ports...)
		s.Ports[0].Published = "8080"
		p.Services["serve"] = s
	}, "serve: publishes host port 8080, heed dev's server"},
	{"a voter missing", func(t *testing.T, p *types.Project) {
		editAll(t, p, "KAFKA_CONTROLLER_QUORUM_VOTERS", ",3@kafka-3:9093", "")
	}, "kafka-3: node 3 is not in KAFKA_CONTROLLER_QUORUM_VOTERS"},
	{"brokers of two clusters", func(t *testing.T, p *types.Project) {
		v := "AAECAwQFBgcICQoLDA0ODw"
		p.Services["kafka-3"].Environment["CLUSTER_ID"] = &v
	}, `kafka-3: CLUSTER_ID "AAECAwQFBgcICQoLDA0ODw"`},
	{"Postgres published on every interface", func(t *testing.T, p *types.Project) {
		s := p.Services["postgres"]
		s.Ports = append([]types.ServicePortConfig(nil), s.Ports...)
		s.Ports[0].HostIP = ""
		p.Services["postgres"] = s
	}, `postgres: publishes 15432 on "", not 127.0.0.1`},
}

// TestComposeMutations applies each of mutations, one at a time, to the
// project compose-go parsed from the real docker-compose.yml, and requires
// check to name it.
func TestComposeMutations(t *testing.T) {
	for _, tc := range mutations {
		t.Run(tc.name, func(t *testing.T) {
			p := load(t)
			tc.mutate(t, p)
			problems := check(p)
			for _, pr := range problems {
				if strings.Contains(pr, tc.want) {
					t.Logf("caught: %s", pr)
					return
				}
			}
			t.Errorf("check did not report %q; it reported %d problem(s):\n%s", tc.want, len(problems), strings.Join(problems, "\n"))
		})
	}
}
