package ingest_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	ledgerv1 "github.com/heed-dev/heed/gen/heed/ledger/v1"
	"github.com/heed-dev/heed/gen/heed/ledger/v1/ledgerv1connect"
	"github.com/heed-dev/heed/ingest"
	"github.com/heed-dev/heed/internal/testenv"
)

// depositPath is where a Connect or gRPC Deposit is posted.
const depositPath = "/heed.ledger.v1.LedgerService/Deposit"

// accepting answers every Deposit: a request that reaches it passed every
// limit and every validation rule. A Deposit with an amount above 1 takes that
// many milliseconds to answer, like a read waiting for its consistency token.
type accepting struct {
	ledgerv1connect.UnimplementedLedgerServiceHandler
}

func (accepting) Deposit(ctx context.Context, req *connect.Request[ledgerv1.DepositRequest]) (*connect.Response[ledgerv1.DepositResponse], error) {
	if ms := req.Msg.GetAmount(); ms > 1 {
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-ctx.Done():
			return nil, connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
	return connect.NewResponse(&ledgerv1.DepositResponse{EventId: "accepted"}), nil
}

// serveLedger serves the accepting ledger on a Server built with opts (nil:
// the package's HandlerOptions and the default limits) on a free port until the
// test ends, and returns its base URL.
func serveLedger(tb testing.TB, opts []ingest.ServerOption) string {
	tb.Helper()
	srv := ingest.NewServer(testenv.Logger(tb), opts...)
	handlerOpts := ingest.HandlerOptions()
	if opts != nil {
		handlerOpts = srv.HandlerOptions()
	}
	path, h := ledgerv1connect.NewLedgerServiceHandler(accepting{}, handlerOpts...)
	srv.Mount(ledgerv1connect.LedgerServiceName, path, h)
	ln, err := ingest.Listen("127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	ctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, ln) }()
	tb.Cleanup(func() {
		stop()
		if err := <-served; err != nil {
			tb.Errorf("serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// h2c is an HTTP/2 client without TLS, as gRPC clients connect.
func h2c() *http.Client {
	ps := new(http.Protocols)
	ps.SetUnencryptedHTTP2(true)
	return &http.Client{Transport: &http.Transport{Protocols: ps}}
}

// gzipBomb returns a small gzip stream (members of 1 MiB of zeros, about 1 KiB
// each) that inflates to mib MiB.
func gzipBomb(tb testing.TB, mib int) []byte {
	tb.Helper()
	var member bytes.Buffer
	zw, err := gzip.NewWriterLevel(&member, gzip.BestCompression)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := zw.Write(make([]byte, 1<<20)); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return bytes.Repeat(member.Bytes(), mib)
}

// gzipped compresses b.
func gzipped(tb testing.TB, b []byte) []byte {
	tb.Helper()
	var out bytes.Buffer
	zw := gzip.NewWriter(&out)
	if _, err := zw.Write(b); err != nil {
		tb.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		tb.Fatal(err)
	}
	return out.Bytes()
}

// grpcFrame wraps a (compressed) message in gRPC's 5-byte prefix.
func grpcFrame(msg []byte, compressed bool) []byte {
	prefix := make([]byte, 5, 5+len(msg))
	if compressed {
		prefix[0] = 1
	}
	binary.BigEndian.PutUint32(prefix[1:], uint32(len(msg)))
	return append(prefix, msg...)
}

// zeros is a request body of n zero bytes that counts how many the server
// pulled from it.
type zeros struct {
	left int64
	read atomic.Int64
}

func (z *zeros) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), z.left)]
	clear(p)
	z.left -= int64(len(p))
	z.read.Add(int64(len(p)))
	return len(p), nil
}

// call posts body to the Deposit method, over Connect unless grpc, and returns
// the code the server answered with ("" for success) and its message.
func call(tb testing.TB, client *http.Client, url string, body io.Reader, grpc, gzipped bool) (code, msg string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+depositPath, body)
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/proto")
	if grpc {
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
	}
	if gzipped {
		req.Header.Set("Content-Encoding", "gzip")
		req.Header.Set("Grpc-Encoding", "gzip")
	}
	res, err := client.Do(req)
	if err != nil {
		tb.Fatalf("post %s: %v", depositPath, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatalf("read response: %v", err)
	}
	if grpc {
		status, msg := res.Header.Get("Grpc-Status"), res.Header.Get("Grpc-Message")
		if status == "" {
			status, msg = res.Trailer.Get("Grpc-Status"), res.Trailer.Get("Grpc-Message")
		}
		names := map[string]string{"0": "", "3": "invalid_argument", "8": "resource_exhausted"}
		if name, ok := names[status]; ok {
			return name, msg
		}
		return "grpc-status " + status, msg
	}
	if res.StatusCode == http.StatusOK {
		return "", ""
	}
	var e struct{ Code, Message string }
	if err := json.Unmarshal(b, &e); err != nil {
		tb.Fatalf("HTTP %d with body %q: %v", res.StatusCode, b, err)
	}
	return e.Code, e.Message
}

// allocated returns how many bytes the process allocated while f ran.
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// A request message over the limit is refused with resource_exhausted, however
// it is sent: plain or gzip-compressed (a small body inflating to 256 MiB),
// over Connect and gRPC. The server allocates about the limit for it, not
// what it inflates to; one just under the limit is not refused for its size.
func TestRequestSizeLimit(t *testing.T) {
	url := serveLedger(t, nil)
	bomb := gzipBomb(t, 256)
	big := make([]byte, 2<<20) // 2 MiB of zeros
	// A message just under the limit, whose request_id only validation refuses.
	under, err := proto.Marshal(&ledgerv1.DepositRequest{RequestId: strings.Repeat("r", ingest.DefaultMaxRequestBytes-64), AccountId: "a", Amount: 1})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name           string
		client         *http.Client
		body           []byte
		grpc, gzipped  bool
		wantCode, want string
	}{
		{"plain 2 MiB over Connect", http.DefaultClient, big, false, false, "resource_exhausted", "larger than"},
		{"plain 2 MiB over gRPC", h2c(), grpcFrame(big, false), true, false, "resource_exhausted", "larger than"},
		{"gzip bomb over Connect", http.DefaultClient, bomb, false, true, "resource_exhausted", "inflates to more than 1048576 bytes"},
		{"gzip bomb over Connect, HTTP/2", h2c(), bomb, false, true, "resource_exhausted", "inflates to more than 1048576 bytes"},
		{"gzip bomb over gRPC", h2c(), grpcFrame(bomb, true), true, true, "resource_exhausted", "inflates to more than 1048576 bytes"},
		{"under the limit, gzipped", http.DefaultClient, gzipped(t, under), false, true, "invalid_argument", "request_id"},
		{"under the limit over gRPC", h2c(), grpcFrame(under, false), true, false, "invalid_argument", "request_id"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var code, msg string
			n := allocated(func() { code, msg = call(t, c.client, url, bytes.NewReader(c.body), c.grpc, c.gzipped) })
			if code != c.wantCode || !strings.Contains(msg, c.want) {
				t.Errorf("answer %s %q, want %s with %q", code, msg, c.wantCode, c.want)
			}
			// The limit and the body, copied a few times; far below 256 MiB.
			if n > 32<<20 {
				t.Errorf("the process allocated %d MiB for a %d KiB request", n>>20, len(c.body)>>10)
			}
			t.Logf("%s: %s, %d KiB allocated for a %d KiB body", c.name, code, n>>10, len(c.body)>>10)
		})
	}
}

// The server stops reading a body far over the limit soon after the limit
// (connect-go alone reads it to its end to report its size).
func TestOversizedBodyNotReadToItsEnd(t *testing.T) {
	url := serveLedger(t, nil)
	for _, grpc := range []bool{false, true} {
		name := map[bool]string{false: "Connect", true: "gRPC"}[grpc]
		t.Run(name, func(t *testing.T) {
			body := &zeros{left: 1 << 30}
			var r io.Reader = body
			if grpc {
				prefix := []byte{0, 0x40, 0, 0, 0} // uncompressed, 1 GiB
				r = io.MultiReader(bytes.NewReader(prefix), body)
			}
			code, msg := call(t, h2c(), url, r, grpc, false)
			if code != "resource_exhausted" {
				t.Errorf("answer %s %q, want resource_exhausted", code, msg)
			}
			// The limit, HTTP/2 flow-control windows and socket buffers.
			if n := body.read.Load(); n > 32<<20 {
				t.Errorf("the server read %d MiB of a 1 GiB body", n>>20)
			}
			t.Logf("the server read %d KiB of a 1 GiB body", body.read.Load()>>10)
		})
	}
}

// WithMaxRequestBytes changes the limit of the handlers built with the
// server's HandlerOptions.
func TestMaxRequestBytesOption(t *testing.T) {
	const limit = 64 << 10
	url := serveLedger(t, []ingest.ServerOption{ingest.WithMaxRequestBytes(limit)})
	client := ledgerv1connect.NewLedgerServiceClient(http.DefaultClient, url)
	cases := []struct {
		name     string
		idLen    int
		wantCode connect.Code
	}{
		{"over", limit + 1, connect.CodeResourceExhausted},
		{"under", limit - 64, connect.CodeInvalidArgument}, // refused only for the request_id's length
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: strings.Repeat("r", c.idLen), AccountId: "a", Amount: 1}))
			if connect.CodeOf(err) != c.wantCode {
				t.Errorf("Deposit with a %d-byte request_id: %v, want %v", c.idLen, err, c.wantCode)
			}
		})
	}
	if _, err := client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "r", AccountId: "a", Amount: 1})); err != nil {
		t.Errorf("a small Deposit: %v", err)
	}
}

// A client that stops sending its request body halfway, or leaves its
// connection idle, is disconnected after the server's read or idle timeout.
// (The test's own deadline is only there to fail instead of hanging.)
func TestServerTimeouts(t *testing.T) {
	const timeout = 200 * time.Millisecond
	addr := strings.TrimPrefix(serveLedger(t, []ingest.ServerOption{ingest.WithTimeouts(timeout, timeout)}), "http://")
	valid, err := proto.Marshal(&ledgerv1.DepositRequest{RequestId: "r", AccountId: "a", Amount: 1})
	if err != nil {
		t.Fatal(err)
	}
	request := func(body []byte, length int) string {
		return "POST " + depositPath + " HTTP/1.1\r\nHost: heed\r\nContent-Type: application/proto\r\n" +
			"Content-Length: " + strconv.Itoa(length) + "\r\n\r\n" + string(body)
	}
	cases := []struct {
		name string
		send string
		// answered: a whole response comes before the server closes.
		answered bool
	}{
		{"body stalls halfway", request(valid[:2], len(valid)), false},
		{"idle after a request", request(valid, len(valid)), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.WriteString(conn, c.send); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(conn)
			if c.answered {
				res, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("read response: %v", err)
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != http.StatusOK {
					t.Fatalf("HTTP %d for a valid Deposit", res.StatusCode)
				}
			}
			// Whatever else the server sends, it then closes the connection.
			_, err = io.Copy(io.Discard, br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server kept the connection open for 30s (a %v timeout was set)", timeout)
			}
		})
	}
}

// The read timeout bounds reading a request, not answering it: a handler that
// takes longer than it (a read waiting up to --read-wait-max) still answers,
// over HTTP/1.1 and HTTP/2.
func TestSlowHandlerOutlivesReadTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	url := serveLedger(t, []ingest.ServerOption{ingest.WithTimeouts(timeout, 0)})
	for name, hc := range map[string]*http.Client{"HTTP/1.1": http.DefaultClient, "HTTP/2": h2c()} {
		t.Run(name, func(t *testing.T) {
			client := ledgerv1connect.NewLedgerServiceClient(hc, url)
			res, err := client.Deposit(t.Context(), connect.NewRequest(&ledgerv1.DepositRequest{RequestId: "r", AccountId: "a", Amount: int64(4 * timeout / time.Millisecond)}))
			if err != nil {
				t.Fatalf("a Deposit answered after 4x the read timeout: %v", err)
			}
			if res.Msg.GetEventId() != "accepted" {
				t.Errorf("answer %v", res.Msg)
			}
		})
	}
}
