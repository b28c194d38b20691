package cli

import (
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/heed-dev/heed/internal/testenv"
)

// TestGoRunSIGTERMStopsHeed: SIGTERM to `go run ./cmd/heed dev` stops heed
// too. The go command exits on SIGTERM without passing it on to the binary it
// runs; heed asks the kernel for a signal when that parent dies, and stops
// gracefully: its ports are free again. Checked without followGoRun: heed
// kept running, holding its ports.
func TestGoRunSIGTERMStopsHeed(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles and runs heed through go run")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the parent-death signal is Linux's")
	}
	goBin := testenv.LookPath(t, "go")
	a := freeDevAddrs(t)
	out := newBannerWriter(bannerLine)
	cmd := exec.Command(goBin, append([]string{"run", "./cmd/heed"}, append(devArgs(a, t.TempDir(), testenv.PostgresURL(t)), "--metrics-listen", "")...)...)
	cmd.Dir = ".."
	cmd.Stdout, cmd.Stderr = out, out
	// Wait returns once go exited even when heed, its child, keeps the
	// output pipe open (as it did before followGoRun).
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	child := 0
	t.Cleanup(func() {
		if child != 0 {
			_ = syscall.Kill(child, syscall.SIGKILL)
		}
		_ = cmd.Process.Kill()
		<-done
	})
	select {
	case <-out.ready:
	case <-done:
		t.Fatalf("go run exited before heed's banner:\n%s", out.String())
	case <-time.After(5 * time.Minute):
		t.Fatalf("no banner within 5 minutes of go run:\n%s", out.String())
	}
	pid := strconv.Itoa(cmd.Process.Pid)
	if children, err := os.ReadFile("/proc/" + pid + "/task/" + pid + "/children"); err == nil {
		if f := strings.Fields(string(children)); len(f) > 0 {
			child, _ = strconv.Atoi(f[0]) // only to kill it at cleanup if the test fails
		}
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-done
	testenv.Eventually(t, 30*time.Second, func() string {
		ln, err := net.Listen("tcp", a.listen)
		if err != nil {
			return "heed still holds " + a.listen + " after go run got SIGTERM and exited: " + err.Error()
		}
		ln.Close()
		return ""
	})
}
