package cli

import (
	"bytes"
	"context"
	"flag"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestConfigErrors runs heed in-process with bad configuration: each run
// must stop, before heed dev's banner, with an exit code and a message that
// says what to change. Runs of dev and broker get a fresh --data-dir and
// free addresses ahead of the case's own flags (the last value of a flag
// wins), so that nothing lands in the source tree or on a shared port.
func TestConfigErrors(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	const someDB = "postgres://postgres@127.0.0.1:1/none?sslmode=disable"

	cases := []struct {
		name       string
		args       []string
		env        map[string]string
		needDB     bool // append --database-url of a fresh, unmigrated database
		missingDB  bool // append --database-url of a database that does not exist
		wantCode   int
		wantStderr []string
		wantStdout []string
		notStderr  []string
	}{
		{name: "unknown verb", args: []string{"frobnicate"}, wantCode: 2,
			wantStderr: []string{`unknown verb "frobnicate"`, "heed help"}},
		{name: "help lists verbs", args: []string{"help"}, wantCode: 0,
			wantStdout: []string{"dev ", "broker ", "serve ", "apply ", "migrate ", "heed help VERB"}},
		{name: "no arguments prints usage to stderr", args: nil, wantCode: 2,
			wantStderr: []string{"Usage: heed VERB", "heed help VERB"}},
		{name: "--help prints help", args: []string{"--help"}, wantCode: 0,
			wantStdout: []string{"Usage: heed VERB"}},
		{name: "-h prints help", args: []string{"-h"}, wantCode: 0,
			wantStdout: []string{"Usage: heed VERB"}},
		{name: "help dev has an example and env names", args: []string{"help", "dev"}, wantCode: 0,
			wantStdout: []string{"Example:\n  heed dev\n", "-database-url", "$HEED_DATABASE_URL", "$HEED_LISTEN"}},
		{name: "help serve example", args: []string{"help", "serve"}, wantCode: 0,
			wantStdout: []string{"Example:\n  heed serve --brokers 127.0.0.1:9092 --database-url postgres://"}},
		{name: "help unknown verb", args: []string{"help", "nope"}, wantCode: 2,
			wantStderr: []string{`unknown verb "nope"`}},
		{name: "serve without database", args: []string{"serve"}, wantCode: 1,
			wantStderr: []string{"heed serve: no database", "--database-url", "HEED_DATABASE_URL"}},
		{name: "apply without database", args: []string{"apply"}, wantCode: 1,
			wantStderr: []string{"--database-url"}},
		{name: "migrate without database", args: []string{"migrate"}, wantCode: 1,
			wantStderr: []string{"--database-url"}},
		{name: "bad log level", args: []string{"migrate", "--log-level", "nope"}, wantCode: 1,
			wantStderr: []string{`--log-level "nope"`, "debug, info, warn or error"}},
		{name: "bad log level from env", args: []string{"dev"}, env: map[string]string{"HEED_LOG_LEVEL": "loud"}, wantCode: 1,
			wantStderr: []string{`--log-level "loud"`, "debug, info, warn or error"}},
		{name: "bad log format", args: []string{"broker", "--log-format", "xml"}, wantCode: 1,
			wantStderr: []string{`--log-format "xml"`, "auto, text or json"}},
		{name: "bad number from env", args: []string{"apply"}, env: map[string]string{"HEED_BATCH_RECORDS": "abc"}, wantCode: 2,
			wantStderr: []string{`HEED_BATCH_RECORDS="abc"`, "--batch-records"}},
		{name: "bad duration from env", args: []string{"serve"}, env: map[string]string{"HEED_READ_WAIT_MAX": "5"}, wantCode: 2,
			wantStderr: []string{`HEED_READ_WAIT_MAX="5"`, "--read-wait-max", "a duration needs a unit: 5s"}},
		{name: "unknown flag", args: []string{"serve", "--nope"}, wantCode: 2,
			wantStderr: []string{"unknown flag --nope", "heed help serve"}, notStderr: []string{"Usage: heed serve"}},
		{name: "failure as JSON with --log-format json", args: []string{"migrate", "--log-format", "json", "--database-url", "postgres://u:hunter2@127.0.0.1:1/x"}, wantCode: 1,
			wantStderr: []string{`"level":"ERROR"`, `"msg":"heed migrate failed"`, `"err":"connect to database`}, notStderr: []string{"hunter2", "heed migrate: connect"}},
		{name: "misspelt flag", args: []string{"serve", "--lisen", "127.0.0.1:1"}, wantCode: 2,
			wantStderr: []string{"unknown flag --lisen; did you mean --listen?"}},
		{name: "duration without a unit", args: []string{"dev", "--shutdown-timeout", "10"}, wantCode: 2,
			wantStderr: []string{`invalid value "10" for flag --shutdown-timeout`, "a duration needs a unit: 10s"}},
		{name: "unknown action", args: []string{"quarantine", "lst"}, wantCode: 2,
			wantStderr: []string{`unknown action "lst" (did you mean list?)`}},
		{name: "help help", args: []string{"help", "help"}, wantCode: 0,
			wantStdout: []string{"Usage: heed help [VERB]"}},
		{name: "verb --help on stdout with double-dash flags", args: []string{"serve", "--help"}, wantCode: 0,
			wantStdout: []string{"Usage: heed serve", "\n  --database-url string\n"}},
		{name: "bad flag value", args: []string{"apply", "--batch-records", "many"}, wantCode: 2,
			wantStderr: []string{"-batch-records", "many"}},
		{name: "stray argument", args: []string{"serve", "extra"}, wantCode: 2,
			wantStderr: []string{`unexpected arguments ["extra"]`, "heed help serve"}},
		{name: "zero partitions", args: []string{"serve", "--database-url", someDB, "--partitions", "0"}, wantCode: 1,
			wantStderr: []string{"--partitions 0: must be at least 1"}},
		{name: "bad schema name", args: []string{"migrate", "--database-url", someDB, "--schema", "Heed-Prod"}, wantCode: 1,
			wantStderr: []string{`schema name "Heed-Prod"`, "lower-case"}},
		{name: "listen address taken", args: []string{"serve", "--database-url", someDB, "--listen", taken.Addr().String()}, wantCode: 1,
			wantStderr: []string{"address already in use", "--listen"}},
		{name: "dev listen address taken", args: []string{"dev", "--listen", taken.Addr().String()}, wantCode: 1,
			wantStderr: []string{"address already in use", "--listen"}},
		{name: "serve zero produce timeout", args: []string{"serve", "--database-url", someDB, "--produce-timeout", "0s"}, wantCode: 1,
			wantStderr: []string{"--produce-timeout 0s: must be more than 0"}},
		{name: "serve zero read wait", args: []string{"serve", "--database-url", someDB, "--read-wait-max", "0s"}, wantCode: 1,
			wantStderr: []string{"--read-wait-max 0s: must be more than 0"}},
		{name: "serve negative read wait", args: []string{"serve", "--database-url", someDB, "--read-wait-max", "-1s"}, wantCode: 1,
			wantStderr: []string{"--read-wait-max -1s: must be more than 0"}},
		{name: "serve negative produce linger", args: []string{"serve", "--database-url", someDB, "--produce-linger", "-1ms"}, wantCode: 1,
			wantStderr: []string{"--produce-linger -1ms: must be 0 or more"}},
		{name: "serve bad compression", args: []string{"serve", "--database-url", someDB, "--compression", "bogus"}, wantCode: 1,
			wantStderr: []string{"--compression", `"bogus"`, "none, gzip, snappy, lz4, zstd"}},
		{name: "serve CORS origin with a path", args: []string{"serve", "--database-url", someDB, "--cors-allowed-origins", "https://app.example.com/"}, wantCode: 1,
			wantStderr: []string{"--cors-allowed-origins", `"https://app.example.com/"`, "use https://app.example.com"}},
		{name: "serve CORS origin from env without a scheme", args: []string{"serve", "--database-url", someDB}, env: map[string]string{"HEED_CORS_ALLOWED_ORIGINS": "http://localhost:5173,app.example.com"}, wantCode: 1,
			wantStderr: []string{"--cors-allowed-origins", `"app.example.com"`, "http:// or https://"}},
		{name: "serve CORS any page without tokens", args: []string{"serve", "--database-url", someDB, "--cors-allowed-origins", "*"}, wantCode: 1,
			wantStderr: []string{"--cors-allowed-origins '*' without --auth-tokens-file", "name the pages' origins"}},
		{name: "dev CORS any page without tokens", args: []string{"dev", "--cors-allowed-origins", "https://a.example.com,*"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--cors-allowed-origins '*' without --auth-tokens-file"}},
		{name: "dev CORS origin with two wildcards", args: []string{"dev", "--cors-allowed-origins", "https://*.*.example.com"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--cors-allowed-origins", "at most one * wildcard"}},
		{name: "serve bad database URL", args: []string{"serve", "--database-url", "postgres://[::1"}, wantCode: 1,
			wantStderr: []string{"--database-url", "postgres://user@host:port/db"}},
		{name: "apply negative batch records", args: []string{"apply", "--database-url", someDB, "--batch-records", "-1"}, wantCode: 1,
			wantStderr: []string{"--batch-records -1: must be at least 1"}},
		{name: "apply zero batch records", args: []string{"apply", "--database-url", someDB, "--batch-records", "0"}, wantCode: 1,
			wantStderr: []string{"--batch-records 0: must be at least 1"}},
		{name: "apply negative batch records from env", args: []string{"apply", "--database-url", someDB}, env: map[string]string{"HEED_BATCH_RECORDS": "-1"}, wantCode: 1,
			wantStderr: []string{"--batch-records -1: must be at least 1"}},
		{name: "apply negative batch bytes", args: []string{"apply", "--database-url", someDB, "--batch-bytes", "-5"}, wantCode: 1,
			wantStderr: []string{"--batch-bytes -5: must be at least 1"}},
		{name: "apply negative batch linger", args: []string{"apply", "--database-url", someDB, "--batch-linger", "-1s"}, wantCode: 1,
			wantStderr: []string{"--batch-linger -1s: must be 0 or more"}},
		{name: "apply zero concurrency", args: []string{"apply", "--database-url", someDB, "--apply-concurrency", "0"}, wantCode: 1,
			wantStderr: []string{"--apply-concurrency 0: must be at least 1"}},
		{name: "apply empty group", args: []string{"apply", "--database-url", someDB, "--group", ""}, wantCode: 1,
			wantStderr: []string{"--group"}},
		{name: "broker zero partitions", args: []string{"broker", "--partitions", "0"}, wantCode: 1,
			wantStderr: []string{"--partitions 0: must be at least 1"}},
		{name: "broker listen address taken", args: []string{"broker", "--listen", taken.Addr().String()}, wantCode: 1,
			wantStderr: []string{"address already in use", "pass --listen with a free address"}, notStderr: []string{"--broker-listen"}},
		{name: "broker listen address malformed", args: []string{"broker", "--listen", "nine-oh-nine-two"}, wantCode: 1,
			wantStderr: []string{"nine-oh-nine-two", "pass --listen with a host:port"}, notStderr: []string{"--broker-listen"}},
		{name: "dev broker address taken", args: []string{"dev", "--broker-listen", taken.Addr().String()}, needDB: true, wantCode: 1,
			wantStderr: []string{"address already in use", "pass --broker-listen with a free address"}},
		{name: "dev bad compression", args: []string{"dev", "--compression", "bogus"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--compression", `"bogus"`}},
		{name: "dev negative batch records", args: []string{"dev", "--batch-records", "-1"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--batch-records -1: must be at least 1"}},
		{name: "dev negative batch bytes", args: []string{"dev", "--batch-bytes", "-1"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--batch-bytes -1: must be at least 1"}},
		{name: "dev negative batch linger", args: []string{"dev", "--batch-linger", "-5ms"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--batch-linger -5ms: must be 0 or more"}},
		{name: "dev zero concurrency", args: []string{"dev", "--apply-concurrency", "0"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--apply-concurrency 0: must be at least 1"}},
		{name: "dev zero produce timeout", args: []string{"dev", "--produce-timeout", "0s"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--produce-timeout 0s: must be more than 0"}},
		{name: "dev zero read wait", args: []string{"dev", "--read-wait-max", "0s"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--read-wait-max 0s: must be more than 0"}},
		{name: "dev zero partitions", args: []string{"dev", "--partitions", "0"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--partitions 0: must be at least 1"}},
		{name: "dev empty group", args: []string{"dev", "--group", ""}, needDB: true, wantCode: 1,
			wantStderr: []string{"--group"}},
		{name: "dev empty topic", args: []string{"dev", "--topic", ""}, needDB: true, wantCode: 1,
			wantStderr: []string{"--topic"}},
		{name: "dev bad schema name", args: []string{"dev", "--schema", "Heed-Prod"}, needDB: true, wantCode: 1,
			wantStderr: []string{"--schema", `schema name "Heed-Prod"`}},
		{name: "dev empty data dir", args: []string{"dev", "--data-dir", ""}, needDB: true, wantCode: 1,
			wantStderr: []string{"--data-dir is empty"}},
		{name: "migrate missing database", args: []string{"migrate"}, missingDB: true, wantCode: 1,
			wantStderr: []string{"does not exist", "createdb -h ", "create database heedtest_missing_"}, notStderr: []string{"is Postgres running"}},
		{name: "serve missing database", args: []string{"serve", "--listen", "127.0.0.1:0"}, missingDB: true, wantCode: 1,
			wantStderr: []string{"does not exist", "createdb -h "}, notStderr: []string{"is Postgres running"}},
		{name: "apply missing database", args: []string{"apply"}, missingDB: true, wantCode: 1,
			wantStderr: []string{"does not exist", "createdb -h "}, notStderr: []string{"is Postgres running"}},
		{name: "dev missing database", args: []string{"dev"}, missingDB: true, wantCode: 1,
			wantStderr: []string{"does not exist", "createdb -h "}, notStderr: []string{"does not answer"}},
		{name: "serve open beyond loopback", args: []string{"serve", "--database-url", someDB, "--listen", "0.0.0.0:0"}, wantCode: 1,
			wantStderr: []string{"refusing to serve on 0.0.0.0:0", "not a loopback address", "--auth-tokens-file", "--insecure-no-auth"}},
		{name: "serve client CA without TLS", args: []string{"serve", "--database-url", someDB, "--client-ca", "ca.pem"}, wantCode: 1,
			wantStderr: []string{"--client-ca needs --tls-cert and --tls-key"}},
		{name: "serve missing tokens file", args: []string{"serve", "--database-url", someDB, "--auth-tokens-file", "/nonexistent/tokens"}, wantCode: 1,
			wantStderr: []string{"auth tokens file", "heed token new"}},
		{name: "apply SASL without user", args: []string{"apply", "--database-url", someDB, "--kafka-sasl", "scram-sha-256"}, wantCode: 1,
			wantStderr: []string{"--kafka-sasl scram-sha-256 needs --kafka-user and --kafka-password"}},
		{name: "apply unknown SASL", args: []string{"apply", "--database-url", someDB, "--kafka-sasl", "kerberos", "--kafka-user", "u", "--kafka-password", "p"}, wantCode: 1,
			wantStderr: []string{`--kafka-sasl "kerberos"`, "plain, scram-sha-256, scram-sha-512"}},
		{name: "broker SASL without password", args: []string{"broker", "--sasl", "scram-sha-256", "--sasl-user", "u"}, wantCode: 1,
			wantStderr: []string{"--sasl needs a mechanism", "--sasl-password"}},
		{name: "apply short retention", args: []string{"apply", "--database-url", someDB, "--retention", "10m"}, wantCode: 1,
			wantStderr: []string{"--retention 10m0s", "at least 1h"}},
		{name: "bench unknown phase", args: []string{"bench", "--database-url", someDB, "--phases", "drain,warp"}, wantCode: 1,
			wantStderr: []string{`phase "warp"`, "references, drain, transfers, rebuild, naive, ingest, e2e, rss"}},
		{name: "bench bad protocol", args: []string{"bench", "--database-url", someDB, "--protocol", "carrier-pigeon"}, wantCode: 1,
			wantStderr: []string{`protocol "carrier-pigeon"`, "connect, connect-h2 or grpc"}},
		{name: "bench zero clients", args: []string{"bench", "--database-url", someDB, "--clients", "0"}, wantCode: 1,
			wantStderr: []string{"--clients 0", "at least 1"}},
		{name: "bench negative batch records", args: []string{"bench", "--database-url", someDB, "--batch-records", "-1"}, wantCode: 1,
			wantStderr: []string{"--batch-records -1: must be at least 1"}},
		{name: "bench negative batch linger", args: []string{"bench", "--database-url", someDB, "--batch-linger", "-1s"}, wantCode: 1,
			wantStderr: []string{"--batch-linger -1s: must be 0 or more"}},
		{name: "bench negative produce linger", args: []string{"bench", "--database-url", someDB, "--produce-linger", "-1s"}, wantCode: 1,
			wantStderr: []string{"--produce-linger -1s: must be 0 or more"}},
		{name: "bench fewer events than accounts", args: []string{"bench", "--database-url", someDB, "--events", "10"}, wantCode: 1,
			wantStderr: []string{"10 events over 10000 accounts", "--accounts"}},
		{name: "bench bad compression", args: []string{"bench", "--database-url", someDB, "--compression", "brotli"}, wantCode: 1,
			wantStderr: []string{"--compression", "none, gzip, snappy, lz4, zstd"}},
		{name: "bench unreachable database", args: []string{"bench", "--database-url", someDB, "--phases", "drain"}, wantCode: 1,
			wantStderr: []string{"127.0.0.1:1"}},
		{name: "apply on unmigrated database", args: []string{"apply"}, needDB: true, wantCode: 1,
			wantStderr: []string{"run `heed migrate`"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			clearHeedEnv(t)
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			args := isolate(t, tc.args)
			if tc.needDB {
				args = append(args, "--database-url", testenv.PostgresURL(t))
			}
			if tc.missingDB {
				args = append(args, "--database-url", testenv.MissingDatabaseURL(t))
			}
			// Bad configuration ends the run at once; the timeout only keeps a
			// run that wrongly starts from blocking the test forever.
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := run(ctx, args, &stdout, &stderr)
			if code != tc.wantCode {
				t.Errorf("heed %s: exit code %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, tc.wantCode, stdout.String(), stderr.String())
			}
			for _, w := range tc.wantStderr {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("heed %s: stderr does not say %q:\n%s", strings.Join(args, " "), w, stderr.String())
				}
			}
			for _, w := range tc.wantStdout {
				if !strings.Contains(stdout.String(), w) {
					t.Errorf("heed %s: stdout does not say %q:\n%s", strings.Join(args, " "), w, stdout.String())
				}
			}
			for _, w := range tc.notStderr {
				if strings.Contains(stderr.String(), w) {
					t.Errorf("heed %s: stderr says %q:\n%s", strings.Join(args, " "), w, stderr.String())
				}
			}
			if tc.wantCode != 0 && stdout.Len() > 0 {
				t.Errorf("heed %s: failed after printing to stdout (a banner before the error?):\n%s", strings.Join(args, " "), stdout.String())
			}
		})
	}
}

// isolate returns args with, for dev and broker, a fresh --data-dir and
// free addresses inserted after the verb, so that the case's own flags,
// which come later, win.
func isolate(tb testing.TB, args []string) []string {
	tb.Helper()
	if len(args) == 0 {
		return nil
	}
	var extra []string
	switch args[0] {
	case "dev":
		a := freeDevAddrs(tb)
		extra = []string{"--data-dir", tb.TempDir(), "--listen", a.listen, "--broker-listen", a.broker, "--metrics-listen", ""}
	case "serve", "apply":
		extra = []string{"--metrics-listen", ""}
	case "broker":
		extra = []string{"--data-dir", tb.TempDir(), "--listen", "127.0.0.1:0"}
	}
	out := append([]string{args[0]}, extra...)
	return append(out, args[1:]...)
}

// TestEnvFallback checks that a HEED_* variable sets a flag the command
// line does not, and that the command line wins over it.
func TestEnvFallback(t *testing.T) {
	clearHeedEnv(t)
	t.Setenv("HEED_BATCH_RECORDS", "7")
	t.Setenv("HEED_GROUP", "from-env")
	cmd := applyVerb.new(ledgerDomains()[0]).(*applyCmd)
	fs := newFlagSet(applyVerb, cmd, new(bytes.Buffer), ledgerDomains(), ledgerDomains()[0])
	if err := fs.Parse([]string{"--group", "from-flag"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs); err != nil {
		t.Fatal(err)
	}
	if cmd.apply.batchRecords != 7 {
		t.Errorf("batch records = %d, want 7 from HEED_BATCH_RECORDS", cmd.apply.batchRecords)
	}
	if cmd.apply.group != "from-flag" {
		t.Errorf("group = %q, want the flag's from-flag over HEED_GROUP", cmd.apply.group)
	}
}

// TestVerbExamplesParse checks that every verb's printed example parses
// with the verb's own flags (the examples are shown by `heed help VERB`).
func TestVerbExamplesParse(t *testing.T) {
	for _, v := range verbs(ledgerDomains()) {
		t.Run(v.name, func(t *testing.T) {
			fields := strings.Fields(v.example)
			if len(fields) < 2 || fields[0] != "heed" || fields[1] != v.name {
				t.Fatalf("example %q does not start with `heed %s`", v.example, v.name)
			}
			args := fields[2:]
			if len(v.actions) > 0 {
				if len(args) == 0 || !slices.Contains(v.actions, args[0]) {
					t.Fatalf("example %q does not name an action (%v)", v.example, v.actions)
				}
				args = args[1:]
			}
			fs := newFlagSet(v, v.new(ledgerDomains()[0]), new(bytes.Buffer), ledgerDomains(), ledgerDomains()[0])
			if err := fs.Parse(args); err != nil {
				t.Errorf("example %q: %v", v.example, err)
			}
		})
	}
}

// TestFlagUsagesNameTypes checks every verb's flag usages for back-quoted
// words: the flag package shows such a word as the flag's type in help
// (--rss-events showed as "heed apply" instead of int).
func TestFlagUsagesNameTypes(t *testing.T) {
	types := map[string]bool{"": true, "string": true, "int": true, "uint": true, "int64": true, "uint64": true, "float": true, "duration": true, "value": true}
	for _, v := range verbs(ledgerDomains()) {
		t.Run(v.name, func(t *testing.T) {
			newFlagSet(v, v.new(ledgerDomains()[0]), new(bytes.Buffer), ledgerDomains(), ledgerDomains()[0]).VisitAll(func(f *flag.Flag) {
				if strings.Contains(f.Usage, "`") {
					t.Errorf("--%s: usage %q has a back-quoted word, which help shows as the flag's type", f.Name, f.Usage)
				}
				if name, _ := flag.UnquoteUsage(f); !types[name] {
					t.Errorf("--%s: help shows its type as %q", f.Name, name)
				}
			})
		})
	}
}

// clearHeedEnv unsets every HEED_* variable for the test (restored after).
func clearHeedEnv(tb testing.TB) {
	tb.Helper()
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "HEED_") && k != testenv.PostgresURLEnv && k != testenv.LogLevelEnv {
			tb.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}
