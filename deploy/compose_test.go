package deploy_test

import (
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/heed-dev/heed/internal/testenv"
)

func load(t *testing.T) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"}, cli.WithWorkingDirectory(".."), cli.WithName("heed"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := opts.LoadProject(t.Context())
	if err != nil {
		t.Fatalf("load docker-compose.yml: %v", err)
	}
	return p
}

func env(s types.ServiceConfig, key string) string {
	if v, ok := s.Environment[key]; ok && v != nil {
		return *v
	}
	return ""
}

// TestCompose checks docker-compose.yml's structure: three KRaft brokers of
// the official image that replicate three times and need two in sync,
// Postgres 16, the one-shot init, serve published on the README's address and
// two apply replicas, each with a health check and in dependency order.
func TestCompose(t *testing.T) {
	p := load(t)
	names := p.ServiceNames()
	slices.Sort(names)
	want := []string{"apply", "init", "kafka-1", "kafka-2", "kafka-3", "postgres", "serve", "topic-init"}
	if !slices.Equal(names, want) {
		t.Fatalf("services %v, want %v", names, want)
	}
	nodes := map[string]bool{}
	for _, n := range []string{"kafka-1", "kafka-2", "kafka-3"} {
		s := p.Services[n]
		if !strings.HasPrefix(s.Image, "apache/kafka:4.") {
			t.Errorf("%s: image %s, want the official apache/kafka, 4.x (KIP-848 consumer groups)", n, s.Image)
		}
		for k, v := range map[string]string{
			"KAFKA_PROCESS_ROLES":                            "broker,controller",
			"KAFKA_DEFAULT_REPLICATION_FACTOR":               "3",
			"KAFKA_MIN_INSYNC_REPLICAS":                      "2",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "3",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
			"KAFKA_UNCLEAN_LEADER_ELECTION_ENABLE":           "false",
			"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "false",
			"KAFKA_GROUP_CONSUMER_SESSION_TIMEOUT_MS":        "10000",
		} {
			if got := env(s, k); got != v {
				t.Errorf("%s: %s=%q, want %q", n, k, got, v)
			}
		}
		if voters := env(s, "KAFKA_CONTROLLER_QUORUM_VOTERS"); strings.Count(voters, "@kafka-") != 3 {
			t.Errorf("%s: KAFKA_CONTROLLER_QUORUM_VOTERS %q: want the three brokers", n, voters)
		}
		nodes[env(s, "KAFKA_NODE_ID")] = true
		if !strings.Contains(env(s, "KAFKA_ADVERTISED_LISTENERS"), "PLAINTEXT://"+n+":9092") {
			t.Errorf("%s: advertised listeners %q do not name it for the other services", n, env(s, "KAFKA_ADVERTISED_LISTENERS"))
		}
		if s.HealthCheck == nil || len(s.HealthCheck.Test) == 0 {
			t.Errorf("%s: no health check", n)
		}
	}
	if len(nodes) != 3 {
		t.Errorf("KAFKA_NODE_ID values %v: want three distinct", nodes)
	}
	if pg := p.Services["postgres"]; !strings.HasPrefix(pg.Image, "postgres:16") || pg.HealthCheck == nil {
		t.Errorf("postgres: image %s, health check %v: want postgres:16 with one", pg.Image, pg.HealthCheck)
	}

	for _, n := range []string{"topic-init", "init", "serve", "apply"} {
		s := p.Services[n]
		if s.Image != "heed:local" || s.Build == nil {
			t.Errorf("%s: image %q, build %v: want heed:local built from the Dockerfile", n, s.Image, s.Build)
		}
		if b := env(s, "HEED_BROKERS"); b != "kafka-1:9092,kafka-2:9092,kafka-3:9092" {
			t.Errorf("%s: HEED_BROKERS %q, want the three brokers", n, b)
		}
		if !strings.Contains(env(s, "HEED_DATABASE_URL"), "@postgres:5432/heed") {
			t.Errorf("%s: HEED_DATABASE_URL %q", n, env(s, "HEED_DATABASE_URL"))
		}
	}
	dep := func(svc, on, condition string) {
		t.Helper()
		d, ok := p.Services[svc].DependsOn[on]
		if !ok || d.Condition != condition {
			t.Errorf("%s depends on %s: %+v, want condition %s", svc, on, d, condition)
		}
	}
	for _, k := range []string{"kafka-1", "kafka-2", "kafka-3"} {
		dep("topic-init", k, types.ServiceConditionHealthy)
	}
	dep("init", "topic-init", types.ServiceConditionCompletedSuccessfully)
	dep("init", "postgres", types.ServiceConditionHealthy)
	dep("serve", "init", types.ServiceConditionCompletedSuccessfully)
	dep("apply", "init", types.ServiceConditionCompletedSuccessfully)

	if c := strings.Join(p.Services["topic-init"].Command, " "); c != "topic create --partitions 8 --replication 3" {
		t.Errorf("topic-init command %q", c)
	}
	if c := strings.Join(p.Services["init"].Command, " "); c != "migrate" {
		t.Errorf("init command %q", c)
	}
	serve := p.Services["serve"]
	published := false
	for _, port := range serve.Ports {
		published = published || (port.Target == 8080 && port.Published == "8080")
	}
	if !published {
		t.Errorf("serve does not publish 8080 on 8080: the README's grpcurl commands use 127.0.0.1:8080")
	}
	if serve.HealthCheck == nil || !strings.Contains(strings.Join(serve.HealthCheck.Test, " "), "healthcheck") {
		t.Errorf("serve: health check %v, want heed healthcheck", serve.HealthCheck)
	}
	apply := p.Services["apply"]
	if apply.Deploy == nil || apply.Deploy.Replicas == nil || *apply.Deploy.Replicas != 2 {
		t.Errorf("apply: want deploy.replicas 2, got %+v", apply.Deploy)
	}
	if apply.HealthCheck == nil || !strings.Contains(strings.Join(apply.HealthCheck.Test, " "), "9465") {
		t.Errorf("apply: health check %v, want heed healthcheck on its metrics port 9465", apply.HealthCheck)
	}
}

// TestComposeCommandsParse runs every heed command of docker-compose.yml,
// and its health checks', through the built binary's flag parsing (each with
// --help appended: it exits 0 only if every flag before it is known).
func TestComposeCommandsParse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds heed")
	}
	bin := testenv.BuildHeed(t)
	p := load(t)
	var cmds [][]string
	for _, n := range []string{"topic-init", "init", "serve", "apply"} {
		s := p.Services[n]
		cmds = append(cmds, s.Command)
		if s.HealthCheck != nil && len(s.HealthCheck.Test) > 1 {
			cmds = append(cmds, s.HealthCheck.Test[2:]) // CMD /usr/local/bin/heed ...
		}
	}
	for _, c := range cmds {
		out, err := exec.Command(bin, append(slices.Clone(c), "--help")...).CombinedOutput()
		if err != nil {
			t.Errorf("heed %s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
}

// TestDockerfile checks the Dockerfile: a build stage and a small non-root
// runtime stage, a static binary, heed as the entrypoint, a HEALTHCHECK
// against /healthz.
func TestDockerfile(t *testing.T) {
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	if n := len(regexp.MustCompile(`(?m)^FROM `).FindAllString(df, -1)); n != 2 {
		t.Errorf("%d FROM lines, want a build stage and a runtime stage", n)
	}
	for _, want := range []string{"CGO_ENABLED=0", "FROM gcr.io/distroless/static", "USER 65532", `ENTRYPOINT ["/usr/local/bin/heed"]`, "HEALTHCHECK", "/healthz", "COPY --from=build"} {
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^USER (root|0)`).MatchString(df) {
		t.Errorf("the runtime stage runs as root")
	}
}
