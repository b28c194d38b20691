package booking_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	bookingv1 "github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1"
	"github.com/heed-dev/heed/examples/booking/gen/heed/examples/booking/v1/bookingv1connect"
	commandv1 "github.com/heed-dev/heed/gen/heed/command/v1"
	"github.com/heed-dev/heed/gen/heed/command/v1/commandv1connect"
	"github.com/heed-dev/heed/internal/testenv"
)

// serverLine is the line of booking dev's banner that says the server is up.
const serverLine = "  server    http://"

// buildBooking builds examples/booking/cmd/booking into a fresh temp dir
// and returns its path. A missing go tool follows testenv's Require policy.
func buildBooking(tb testing.TB) string {
	tb.Helper()
	return testenv.BuildBinary(tb, "./examples/booking/cmd/booking")
}

// dev is `booking dev` run from the built binary on a fresh database and
// data dir; start runs it (again). Each process is killed, if it still runs,
// when the test that made dev ends.
type dev struct {
	owner               testing.TB
	bin, dbURL, dataDir string
	listen, broker      string
	proc                *process
}

func newDev(t *testing.T, bin string) *dev {
	t.Helper()
	return &dev{
		owner:   t,
		bin:     bin,
		dbURL:   testenv.PostgresURL(t),
		dataDir: t.TempDir(),
		listen:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
		broker:  fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t)),
	}
}

func (d *dev) start(t *testing.T) {
	t.Helper()
	d.proc = start(t, d.owner, d.bin, serverLine, "dev",
		"--data-dir", d.dataDir, "--listen", d.listen, "--broker-listen", d.broker,
		"--database-url", d.dbURL, "--metrics-listen", "", "--log-level", "warn")
}

func (d *dev) client() client {
	return client{
		tb:       d.owner,
		c:        bookingv1connect.NewBookingServiceClient(http.DefaultClient, "http://"+d.listen),
		commands: commandv1connect.NewCommandServiceClient(http.DefaultClient, "http://"+d.listen),
	}
}

// run runs the binary with args and the broker's and database's flags to
// its end and returns its exit code and output (stdout, then stderr).
func (d *dev) run(t *testing.T, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	args = append(args, "--brokers", d.broker, "--database-url", d.dbURL)
	cmd := exec.CommandContext(ctx, d.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run booking %s: %v", strings.Join(args, " "), err)
	}
	return code, stdout.String() + stderr.String()
}

// output is a process's stdout, closing ready once it shows marker.
type output struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	once   sync.Once
	ready  chan struct{}
}

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	if strings.Contains(o.buf.String(), o.marker) {
		o.once.Do(func() { close(o.ready) })
	}
	return len(p), nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// process is the binary running.
type process struct {
	cmd            *exec.Cmd
	stdout, stderr *output
	done           chan struct{}
	err            error // set before done closes
}

// start starts `bin args...` and waits until its stdout shows marker. It is
// killed at owner's end if it still runs.
func start(tb, owner testing.TB, bin, marker string, args ...string) *process {
	tb.Helper()
	p := &process{
		cmd:    exec.Command(bin, args...),
		stdout: &output{marker: marker, ready: make(chan struct{})},
		stderr: &output{ready: make(chan struct{})},
		done:   make(chan struct{}),
	}
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		tb.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	owner.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	select {
	case <-p.stdout.ready:
	case <-p.done:
		tb.Fatalf("booking exited before printing %q: %v\nstdout:\n%s\nstderr:\n%s", marker, p.err, p.stdout, p.stderr)
	case <-time.After(60 * time.Second):
		tb.Fatalf("booking did not print %q within 60s\nstdout:\n%s\nstderr:\n%s", marker, p.stdout, p.stderr)
	}
	return p
}

// interrupt sends SIGINT and requires exit code 0 within 30s.
func (p *process) interrupt(tb testing.TB) {
	tb.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		tb.Fatalf("send SIGINT: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		tb.Fatalf("booking did not exit within 30s of SIGINT\nstderr:\n%s", p.stderr)
	}
	if p.err != nil {
		tb.Fatalf("booking exited with %v after SIGINT, want exit code 0\nstderr:\n%s", p.err, p.stderr)
	}
}

// client wraps the domain's service and heed's CommandService, which
// every domain gets, with the test's assertions.
type client struct {
	tb       testing.TB
	c        bookingv1connect.BookingServiceClient
	commands commandv1connect.CommandServiceClient
}

// in is c failing tb.
func (c client) in(tb testing.TB) client {
	c.tb = tb
	return c
}

// outcome is what became of the command sent with requestID for show, once
// the write of token is applied, and its result (nil for none).
func (c client) outcome(show, requestID, token string) (commandv1.CommandStatus, string, *bookingv1.CommandResult) {
	c.tb.Helper()
	res, err := c.commands.GetCommandResult(c.tb.Context(), connect.NewRequest(&commandv1.GetCommandResultRequest{
		Ref: &commandv1.GetCommandResultRequest_RequestId{RequestId: requestID}, Key: show, ConsistencyToken: token}))
	if err != nil {
		c.tb.Fatalf("GetCommandResult %s (token %q): %v", requestID, token, err)
	}
	if res.Msg.GetResult() == nil {
		return res.Msg.GetStatus(), res.Msg.GetReason(), nil
	}
	var r bookingv1.CommandResult
	if err := res.Msg.GetResult().UnmarshalTo(&r); err != nil {
		c.tb.Fatalf("GetCommandResult %s: the result is not a booking CommandResult: %v", requestID, err)
	}
	return res.Msg.GetStatus(), res.Msg.GetReason(), &r
}

// create creates show with seats and returns the command's token.
func (c client) create(show string, seats ...string) string {
	c.tb.Helper()
	res, err := c.c.CreateShow(c.tb.Context(), connect.NewRequest(&bookingv1.CreateShowRequest{RequestId: "create-" + show, ShowId: show, SeatLabels: seats}))
	if err != nil {
		c.tb.Fatalf("CreateShow %s: %v", show, err)
	}
	return res.Msg.GetConsistencyToken()
}

// hold asks hold to hold seats of show for ttl and returns the command's
// token.
func (c client) hold(show, hold string, ttl time.Duration, seats ...string) string {
	c.tb.Helper()
	res, err := c.c.HoldSeats(c.tb.Context(), connect.NewRequest(&bookingv1.HoldSeatsRequest{
		RequestId: "hold-" + show + "-" + hold, ShowId: show, HoldId: hold, Seats: seats, Ttl: durationpb.New(ttl)}))
	if err != nil {
		c.tb.Fatalf("HoldSeats %s/%s: %v", show, hold, err)
	}
	return res.Msg.GetConsistencyToken()
}

func (c client) confirm(show, hold string) string {
	c.tb.Helper()
	res, err := c.c.ConfirmHold(c.tb.Context(), connect.NewRequest(&bookingv1.ConfirmHoldRequest{RequestId: "confirm-" + show + "-" + hold, ShowId: show, HoldId: hold}))
	if err != nil {
		c.tb.Fatalf("ConfirmHold %s/%s: %v", show, hold, err)
	}
	return res.Msg.GetConsistencyToken()
}

func (c client) release(show, hold string) string {
	c.tb.Helper()
	res, err := c.c.ReleaseHold(c.tb.Context(), connect.NewRequest(&bookingv1.ReleaseHoldRequest{RequestId: "release-" + show + "-" + hold, ShowId: show, HoldId: hold}))
	if err != nil {
		c.tb.Fatalf("ReleaseHold %s/%s: %v", show, hold, err)
	}
	return res.Msg.GetConsistencyToken()
}

// free lists show's free seats once the write of token is applied.
func (c client) free(show, token string) []string {
	c.tb.Helper()
	res, err := c.c.ListFreeSeats(c.tb.Context(), connect.NewRequest(&bookingv1.ListFreeSeatsRequest{ShowId: show, ConsistencyToken: token}))
	if err != nil {
		c.tb.Fatalf("ListFreeSeats %s (token %q): %v", show, token, err)
	}
	return res.Msg.GetSeats()
}

// getHold reads a hold once the write of token is applied.
func (c client) getHold(show, hold, token string) (*bookingv1.Hold, error) {
	c.tb.Helper()
	res, err := c.c.GetHold(c.tb.Context(), connect.NewRequest(&bookingv1.GetHoldRequest{ShowId: show, HoldId: hold, ConsistencyToken: token}))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetHold(), nil
}

// status reads a hold's status and reason once the write of token is
// applied.
func (c client) status(show, hold, token string) (bookingv1.HoldStatus, string) {
	c.tb.Helper()
	h, err := c.getHold(show, hold, token)
	if err != nil {
		c.tb.Fatalf("GetHold %s/%s (token %q): %v", show, hold, token, err)
	}
	return h.GetStatus(), h.GetReason()
}
