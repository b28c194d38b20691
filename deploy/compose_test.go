package deploy_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"

	"github.com/heed-dev/heed/internal/testenv"
)

func load(t *testing.T) *types.Project { return loadEnv(t, nil) }

// loadEnv loads docker-compose.yml as `docker compose` would with only env
// in the environment (KEY=value): the developer's own variables do not leak in.
func loadEnv(t *testing.T, env []string) *types.Project {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{"../docker-compose.yml"}, cli.WithWorkingDirectory(".."), cli.WithName("heed"), cli.WithEnv(env))
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

// TestCompose checks docker-compose.yml's structure (three KRaft brokers of
// the official image that replicate three times and need two in sync,
// Postgres 16, the one-shot init, serve published and two apply replicas, in
// dependency order) and, by meaning, what it makes (check): the file as it is
// has no problem.
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
		published = published || port.Target == 8080
	}
	if !published {
		t.Errorf("serve does not publish its --listen port 8080 on the host: the README's grpcurl commands need it")
	}
	if serve.HealthCheck == nil || !strings.Contains(strings.Join(serve.HealthCheck.Test, " "), "healthcheck") {
		t.Errorf("serve: health check %v, want heed healthcheck", serve.HealthCheck)
	}
	apply := p.Services["apply"]
	if apply.Deploy == nil || apply.Deploy.Replicas == nil || *apply.Deploy.Replicas != 2 {
		t.Errorf("apply: want deploy.replicas 2, got %+v", apply.Deploy)
	}
	for _, problem := range check(p) {
		t.Error(problem)
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

// TestComposePortsOverridable: every host port the file publishes comes from
// a HEED_..._PORT variable; set each to another value, the file publishes
// exactly those, and what it advertises follows (check finds no problem).
// Unset, the defaults are clear of heed dev's (check's devPorts).
func TestComposePortsOverridable(t *testing.T) {
	data, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	vars := regexp.MustCompile(`\$\{(HEED_[A-Z0-9_]+_PORT):-([0-9]+)\}`).FindAllStringSubmatch(string(data), -1)
	override := map[string]string{} // variable -> its test value
	var env []string
	for _, m := range vars {
		if _, seen := override[m[1]]; !seen {
			override[m[1]] = strconv.Itoa(30001 + len(override))
			env = append(env, m[1]+"="+override[m[1]])
		}
	}
	values := map[string]bool{}
	for _, v := range override {
		values[v] = true
	}
	p := loadEnv(t, env)
	published := 0
	for _, n := range p.ServiceNames() {
		for _, pc := range p.Services[n].Ports {
			published++
			if !values[pc.Published] {
				t.Errorf("%s publishes host port %s with every HEED_*_PORT set (%v): not overridable", n, pc.Published, env)
			}
			delete(values, pc.Published)
		}
	}
	if published == 0 || len(values) != 0 {
		t.Errorf("%d ports published; variables not used for one: %v", published, values)
	}
	for _, problem := range check(p) {
		t.Errorf("with %v: %s", env, problem)
	}
	t.Logf("overridable: %v", env)
}

// TestDockerfileStampsVersion builds heed with the -ldflags of the
// Dockerfile's go build, its VERSION and REVISION build arguments set, and
// requires `heed version` (and --version) to print them: the image says
// which build it is (heed_build_info carries the same, observe
// TestBuildInfo).
func TestDockerfileStampsVersion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds heed")
	}
	data, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	build := df[:strings.Index(df, "\nFROM gcr.io/distroless")]
	for _, arg := range []string{"VERSION", "REVISION"} {
		if !regexp.MustCompile(`(?m)^ARG ` + arg + `\b`).MatchString(build) {
			t.Errorf("the build stage declares no ARG %s", arg)
		}
	}
	m := regexp.MustCompile(`go build [^\n]*-ldflags="([^"]*)"`).FindStringSubmatch(build)
	if m == nil {
		t.Fatal(`the Dockerfile's go build has no -ldflags="..."`)
	}
	const version, revision = "v9.8.7-deploytest", "0123456789abcdef"
	ldflags := os.Expand(m[1], func(k string) string {
		return map[string]string{"VERSION": version, "REVISION": revision}[k]
	})
	goBin := testenv.LookPath(t, "go")
	mod, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "heed")
	cmd := exec.Command(goBin, "build", "-ldflags", ldflags, "-o", bin, "./cmd/heed")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build -ldflags %q: %v\n%s", ldflags, err, out)
	}
	want := fmt.Sprintf("heed %s (revision %s, %s)\n", version, revision, runtime.Version())
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.Command(bin, arg).CombinedOutput()
		if err != nil || string(out) != want {
			t.Errorf("heed %s: %q, %v; want %q", arg, out, err, want)
		}
	}
}
