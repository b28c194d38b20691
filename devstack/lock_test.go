package devstack_test

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/testenv"
)

// wantInUse fails tb unless err is a *DataDirInUseError for dir naming
// this process as program, with the broker at brokerAddr.
func wantInUse(tb testing.TB, err error, dir, program, brokerAddr string) {
	tb.Helper()
	var inUse *devstack.DataDirInUseError
	if !errors.As(err, &inUse) {
		tb.Fatalf("error %v (%T), want a *DataDirInUseError", err, err)
	}
	h := inUse.Holder
	if inUse.Dir != dir || h.PID != os.Getpid() || h.Program != program || h.Broker != brokerAddr || h.Since.IsZero() {
		tb.Errorf("in use: dir %s, holder %+v; want dir %s held by %s, pid %d, broker %s, with a start time", inUse.Dir, h, dir, program, os.Getpid(), brokerAddr)
	}
	want := fmt.Sprintf("data dir %s is in use by %s (pid %d, broker %s, since ", dir, program, os.Getpid(), brokerAddr)
	if !strings.Contains(err.Error(), want) {
		tb.Errorf("error %q does not say %q", err, want)
	}
}

// TestBrokerDataDirOneOwner starts a second broker on a data dir a running
// broker holds: it must fail naming the holder, before binding its address
// (the case on the first broker's own address fails on the lock, not on
// the port), and leave the first serving. Once the first closes, the
// directory is free again and keeps the first one's records.
func TestBrokerDataDirOneOwner(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	first, err := devstack.StartBroker(ctx, devstack.BrokerConfig{
		Listen: "127.0.0.1:0", DataDir: dir, Program: "first-owner", Logger: testenv.Logger(t),
	})
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	t.Cleanup(first.Close)
	produce(ctx, t, newClient(t, first), "orders", 5)

	cases := []struct {
		name   string
		listen string
	}{
		{name: "another address", listen: "127.0.0.1:0"},
		{name: "the holder's own address", listen: first.Addrs()[0]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := devstack.StartBroker(ctx, devstack.BrokerConfig{Listen: tc.listen, DataDir: dir, Program: "second-owner"})
			if err == nil {
				b.Close()
				t.Fatal("a second broker started on a data dir in use")
			}
			wantInUse(t, err, dir, "first-owner", first.Addrs()[0])
		})
	}

	produce(ctx, t, newClient(t, first), "orders", 10) // values v00..v09 again
	if got := consumeAll(ctx, t, first, "orders", 15); len(got) != 15 {
		t.Errorf("the holder has %d records after the refused starts, want 15", len(got))
	}
	first.Close()

	again := startBroker(t, dir)
	got := consumeAll(ctx, t, again, "orders", 15)
	wantValues := slices.Sorted(slices.Values(append(want(5), want(10)...)))
	if !slices.Equal(got, wantValues) {
		t.Errorf("records after the holder closed = %v, want %v", got, wantValues)
	}
}

// TestBrokerWithCallersLock passes a lock taken with LockDataDir to
// StartBroker: the broker records its address in it, another broker on the
// directory is refused, and the lock outlives the broker until released.
func TestBrokerWithCallersLock(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	lock, err := devstack.LockDataDir(dir, devstack.Holder{Program: "heed dev"})
	if err != nil {
		t.Fatalf("LockDataDir: %v", err)
	}
	t.Cleanup(lock.Release)
	b, err := devstack.StartBroker(ctx, devstack.BrokerConfig{Listen: "127.0.0.1:0", DataDir: dir, Lock: lock})
	if err != nil {
		t.Fatalf("StartBroker with the caller's lock: %v", err)
	}
	t.Cleanup(b.Close)

	_, err = devstack.StartBroker(ctx, devstack.BrokerConfig{Listen: "127.0.0.1:0", DataDir: dir})
	wantInUse(t, err, dir, "heed dev", b.Addrs()[0])
	_, err = devstack.LockDataDir(dir, devstack.Holder{})
	wantInUse(t, err, dir, "heed dev", b.Addrs()[0])

	b.Close()
	_, err = devstack.LockDataDir(dir, devstack.Holder{})
	wantInUse(t, err, dir, "heed dev", b.Addrs()[0])
	lock.Release()
	lock.Release() // idempotent
	again, err := devstack.LockDataDir(dir, devstack.Holder{})
	if err != nil {
		t.Fatalf("LockDataDir after Release: %v", err)
	}
	again.Release()
}

// TestBrokerLockMismatch checks the configurations StartBroker refuses: a
// lock on another directory, a lock without a DataDir.
func TestBrokerLockMismatch(t *testing.T) {
	lock, err := devstack.LockDataDir(t.TempDir(), devstack.Holder{})
	if err != nil {
		t.Fatalf("LockDataDir: %v", err)
	}
	t.Cleanup(lock.Release)
	cases := []struct {
		name    string
		dataDir string
		want    string
	}{
		{name: "another directory", dataDir: t.TempDir(), want: "BrokerConfig.Lock holds"},
		{name: "no data dir", dataDir: "", want: "DataDir is empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: "127.0.0.1:0", DataDir: tc.dataDir, Lock: lock})
			if err == nil {
				b.Close()
				t.Fatal("StartBroker accepted the lock")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not say %q", err, tc.want)
			}
		})
	}
}
