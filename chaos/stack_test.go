package chaos

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heed-dev/heed/devstack"
	"github.com/heed-dev/heed/internal/failpoint"
	"github.com/heed-dev/heed/internal/testenv"
)

// stack is what a chaos run drives: a private Postgres cluster it can crash,
// the embedded broker, and serve and apply processes of the target's binary
// built with failpoints, kept alive by the run: a process that died is started again.
// The broker runs in this process (broker, so that faults reach it through
// kfake's control hooks) or, for the broker restarts, as a heed broker
// process (brokerProc) on a fixed address and data dir.
type stack struct {
	t          *testing.T
	tg         *target
	bin        string
	pg         *devstack.Cluster
	dbURL      string
	broker     *devstack.Broker // nil with brokerProc
	brokerProc *slot
	brokerAddr string
	serves     []*slot // each on its own address
	applies    []*slot
	log        *schedule

	// swap is held by a rebuild's swap (and the drop of the old schema),
	// and read-held by a reader that must see one projection whole: a swap
	// renames schemas under a running transaction.
	swap sync.RWMutex
	// relay is the state of the faults that stop the relay's produce
	// requests (relay_test.go).
	relay relayFaults
}

// slot is one process the stack keeps running: args, and the process now
// running them (nil while down).
type slot struct {
	name string
	args []string
	addr string // serve's listen address

	mu   sync.Mutex
	proc *proc
	env  []string // the next start's extra environment (a failpoint), then cleared
}

// proc is a started process of the binary.
type proc struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // stdout and stderr, for a failure's report
	mu   sync.Mutex
	done chan struct{}
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// newStack builds tg's binary with failpoints and starts Postgres, the
// broker, serves servers and applies appliers.
func newStack(t *testing.T, tg *target, serves, applies int, log *schedule) *stack {
	t.Helper()
	return newStackBroker(t, tg, serves, applies, log, false)
}

// newStackBroker is newStack with, if brokerProcess, the broker as a heed
// broker process that restartBroker can SIGKILL and start again, and
// applyArgs added to every applier's.
func newStackBroker(t *testing.T, tg *target, serves, applies int, log *schedule, brokerProcess bool, applyArgs ...string) *stack {
	t.Helper()
	s := &stack{t: t, tg: tg, bin: testenv.BuildBinary(t, tg.pkg, "failpoints"), pg: testenv.Cluster(t), log: log}
	s.dbURL = s.pg.URL("postgres")
	if brokerProcess {
		s.brokerAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		s.brokerProc = &slot{name: "broker", args: []string{"broker", "--listen", s.brokerAddr, "--data-dir", t.TempDir(), "--partitions", "8"}}
		s.startBroker()
		t.Cleanup(func() { s.kill(s.brokerProc) })
	} else {
		b, err := devstack.StartBroker(t.Context(), devstack.BrokerConfig{Listen: "127.0.0.1:0", DataDir: t.TempDir(), Partitions: 8})
		if err != nil {
			t.Fatalf("start broker: %v", err)
		}
		t.Cleanup(b.Close)
		s.broker, s.brokerAddr = b, b.Addrs()[0]
	}
	run(t, s.bin, "migrate", "--database-url", s.dbURL)
	level := "warn"
	if logDir != "" {
		level = "info"
	}
	common := []string{"--brokers", s.brokerAddr, "--database-url", s.dbURL, "--log-level", level}
	for i := range serves {
		addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
		s.serves = append(s.serves, &slot{name: fmt.Sprint("serve-", i), addr: addr, args: append([]string{"serve", "--listen", addr}, common...)})
	}
	for i := range applies {
		args := append(append([]string{"apply"}, common...), applyArgs...)
		if staticMembers {
			args = append(args, "--group-instance-id", fmt.Sprint("apply-", i))
		}
		if gp := os.Getenv("HEED_CHAOS_GROUP_PROTOCOL"); gp != "" {
			args = append(args, "--group-protocol", gp)
		}
		s.applies = append(s.applies, &slot{name: fmt.Sprint("apply-", i), args: args})
	}
	for _, sl := range s.all() {
		s.start(sl)
	}
	t.Cleanup(func() {
		for _, sl := range s.all() {
			s.kill(sl)
		}
	})
	return s
}

func (s *stack) all() []*slot { return append(append([]*slot{}, s.serves...), s.applies...) }

// start starts sl's process if it is not running.
func (s *stack) start(sl *slot) {
	sl.mu.Lock()
	defer sl.mu.Unlock()
	if sl.proc != nil && sl.proc.running() {
		return
	}
	p := &proc{cmd: exec.Command(s.bin, sl.args...), done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if logDir != "" {
		if f, err := os.OpenFile(filepath.Join(logDir, s.tg.name+"-"+sl.name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "==== %s started at %.2fs with %v\n", sl.name, time.Since(s.log.start).Seconds(), sl.env)
			p.cmd.Stdout, p.cmd.Stderr = io.MultiWriter(p, f), io.MultiWriter(p, f)
			go func() { <-p.done; f.Close() }()
		}
	}
	p.cmd.Env = append(os.Environ(), sl.env...)
	sl.env = nil
	if err := p.cmd.Start(); err != nil {
		s.t.Errorf("start %s: %v", sl.name, err)
		return
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	sl.proc = p
}

// startBroker starts the broker process and waits until it serves.
func (s *stack) startBroker() {
	s.start(s.brokerProc)
	p := s.brokerProc.running()
	deadline := time.Now().Add(30 * time.Second)
	for p != nil && p.running() && time.Now().Before(deadline) {
		p.mu.Lock()
		up := strings.Contains(p.out.String(), "broker listening on ")
		p.mu.Unlock()
		if up {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	s.t.Errorf("heed broker did not start serving on %s", s.brokerAddr)
}

// restartBroker SIGKILLs the broker process and starts it again at once, on
// the same data dir and address, as a supervisor would.
func (s *stack) restartBroker() {
	s.kill(s.brokerProc)
	s.startBroker()
}

// running is sl's process while it runs, else nil.
func (sl *slot) running() *proc {
	sl.mu.Lock()
	p := sl.proc
	sl.mu.Unlock()
	if p == nil || !p.running() {
		return nil
	}
	return p
}

// kill sends SIGKILL to sl's process, if running, and waits for it to exit.
func (s *stack) kill(sl *slot) {
	if p := sl.running(); p != nil {
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		<-p.done
	}
}

// terminate sends SIGTERM to sl's process and waits for it to exit.
func (s *stack) terminate(sl *slot) {
	p := sl.running()
	if p == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		s.t.Errorf("%s did not exit within 30s of SIGTERM", sl.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

// revive starts every process that is down, counting the ones that crashed
// at a failpoint; it returns how many it started.
func (s *stack) revive() int {
	n := 0
	for _, sl := range s.all() {
		sl.mu.Lock()
		p := sl.proc
		down := p == nil || !p.running()
		sl.mu.Unlock()
		if !down {
			continue
		}
		if p != nil {
			if point := crashedAt(p); point != "" {
				s.log.count("crashed at " + point)
			}
		}
		s.start(sl)
		n++
	}
	return n
}

// crashedAt is the failpoint p crashed at, from its output, or "".
func crashedAt(p *proc) string {
	p.mu.Lock()
	out := p.out.String()
	p.mu.Unlock()
	for _, point := range failpoint.Points {
		if strings.Contains(out, "failpoint "+point+": crashing") {
			return point
		}
	}
	return ""
}

// logDir, from HEED_CHAOS_LOGDIR, keeps every process's output (at log level
// info) in NAME.log there, for looking into a run.
var logDir = os.Getenv("HEED_CHAOS_LOGDIR")

// keep appends text to NAME.log in logDir, if set.
func (s *stack) keep(name, text string) {
	if logDir == "" {
		return
	}
	if f, err := os.OpenFile(filepath.Join(logDir, s.tg.name+"-"+name+".log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
		fmt.Fprintln(f, text)
		f.Close()
	}
}

// staticMembers gives each applier slot its own --group-instance-id, as a
// StatefulSet would, so that a restarted applier takes its partitions back
// without a rebalance: the deployment docs/RELIABILITY.md recommends.
// HEED_CHAOS_DYNAMIC=1 runs dynamic members instead.
var staticMembers = os.Getenv("HEED_CHAOS_DYNAMIC") == ""

// pick returns a random slot of slots.
func pick(rng *rand.Rand, slots []*slot) *slot { return slots[rng.IntN(len(slots))] }

// run runs bin with args to completion and fails the test if it fails.
func run(t *testing.T, bin string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", filepath.Base(bin), args, err, out)
	}
}
