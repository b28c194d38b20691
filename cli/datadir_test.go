package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/internal/testenv"
)

// inUseMessage is the start of what a second owner of dataDir is told while
// program (pid, its broker at brokerAddr) holds it.
func inUseMessage(dataDir, program string, pid int, brokerAddr string) string {
	return fmt.Sprintf("data dir %s is in use by %s (pid %d, broker %s, since ", filepath.Join(dataDir, "kafka"), program, pid, brokerAddr)
}

// TestDataDirOneOwner runs heed broker in-process on a data dir, then
// second owners of the directory in the same process: each must fail with
// exit code 1, naming the holder and the flag to change, and print nothing
// on stdout. The cases on the holder's own address fail on the lock, not on
// the port: the lock comes before anything is bound.
func TestDataDirOneOwner(t *testing.T) {
	dataDir := t.TempDir()
	brokerAddr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	runHeed(t, brokerReadyLine, "broker", "--data-dir", dataDir, "--listen", brokerAddr, "--log-level", "warn")
	want := inUseMessage(dataDir, "heed broker", os.Getpid(), brokerAddr)

	other := freeDevAddrs(t)
	dbURL := testenv.PostgresURL(t) // were a dev case to start, it must not touch the local server's database heed
	cases := []struct {
		name string
		args []string
	}{
		{name: "broker on another address", args: []string{"broker", "--data-dir", dataDir, "--listen", other.broker}},
		{name: "broker on the holder's address", args: []string{"broker", "--data-dir", dataDir, "--listen", brokerAddr}},
		{name: "dev on other addresses", args: devArgs(other, dataDir, dbURL)},
		{name: "dev on the holder's address", args: devArgs(devAddrs{listen: other.listen, broker: brokerAddr}, dataDir, dbURL)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute) // a run that wrongly starts ends here
			defer cancel()
			var stdout, stderr bytes.Buffer
			code := run(ctx, tc.args, &stdout, &stderr)
			if code != 1 {
				t.Errorf("heed %s: exit code %d, want 1\nstderr:\n%s", strings.Join(tc.args, " "), code, stderr.String())
			}
			for _, w := range []string{want, ": stop it, or pass another --data-dir"} {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("heed %s: stderr does not say %q:\n%s", strings.Join(tc.args, " "), w, stderr.String())
				}
			}
			if stdout.Len() > 0 {
				t.Errorf("heed %s: printed to stdout:\n%s", strings.Join(tc.args, " "), stdout.String())
			}
		})
	}
}

// TestDataDirOneOwnerProcesses runs the built binary's heed dev, then second
// owners of its data dir as separate processes: each exits non-zero naming
// the first (its pid and broker) while the first keeps serving. After the
// first is SIGKILLed, which leaves its lock file behind, a new heed dev
// starts on the directory and has the first one's state.
func TestDataDirOneOwnerProcesses(t *testing.T) {
	d := startBuiltDev(t, "open-owner", "owner")
	dbURL, bin, dataDir, addrs, args, c, first := d.dbURL, d.bin, d.dataDir, d.addrs, d.args, d.client, d.first
	ctx := t.Context()
	want := inUseMessage(dataDir, "heed dev", first.cmd.Process.Pid, addrs.broker)

	other := freeDevAddrs(t)
	cases := []struct {
		name string
		args []string
	}{
		{name: "dev on other addresses", args: devArgs(other, dataDir, dbURL)},
		{name: "dev on the same addresses", args: args},
		{name: "broker on another address", args: []string{"broker", "--data-dir", dataDir, "--listen", other.broker}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out := runTool(t, time.Minute, true, bin, tc.args...)
			for _, w := range []string{want, ": stop it, or pass another --data-dir"} {
				if !strings.Contains(out, w) {
					t.Errorf("heed %s: output does not say %q:\n%s", strings.Join(tc.args, " "), w, out)
				}
			}
			if strings.Contains(out, "heed dev is running") {
				t.Errorf("heed %s: printed the banner before failing:\n%s", strings.Join(tc.args, " "), out)
			}
		})
	}

	if !first.running() {
		t.Fatalf("the first heed dev exited: %v\nstderr:\n%s", first.err, first.stderr.String())
	}
	dep, err := c.Deposit(ctx, connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "deposit-owner", AccountId: "owner", Amount: 70}))
	if err != nil {
		t.Fatalf("Deposit to the first heed dev after the refused starts: %v", err)
	}
	if got := balance(t, c, "owner", dep.Msg.GetConsistencyToken()); got != 70 {
		t.Fatalf("balance = %d, want 70", got)
	}

	first.kill(t)
	lock, err := os.ReadFile(filepath.Join(dataDir, "kafka", "LOCK"))
	if err != nil || !bytes.Contains(lock, fmt.Appendf(nil, `"pid": %d`, first.cmd.Process.Pid)) {
		t.Errorf("after SIGKILL the lock file says %q (%v), want the killed holder's record left behind", lock, err)
	}
	second := startDev(t, bin, args...)
	if got := balance(t, c, "owner", ""); got != 70 {
		t.Errorf("balance after the restart = %d, want 70", got)
	}
	if got := topicRecords(t, addrs.broker); got != 2 {
		t.Errorf("topic %s holds %d records after the restart, want 2 (OpenAccount, Deposit)", defaultTopic, got)
	}
	second.interrupt(t)
}
