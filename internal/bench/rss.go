package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// rss produces RSSEvents deposits, then runs `heed apply` as a separate
// process and samples its resident set size until it has applied them all.
func (e *env) rss(ctx context.Context, r *Result) error {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		return errors.New("the rss phase reads /proc/PID/status (Linux); leave it out with --phases")
	}
	exe, err := e.cfg.exe()
	if err != nil {
		return err
	}
	pool, schemaName, drop, err := e.freshSchema(ctx, "rss", 2)
	if err != nil {
		return err
	}
	defer drop()
	topic, cl, del, err := e.topic(ctx, "rss")
	if err != nil {
		return err
	}
	defer del()

	accounts := e.cfg.Accounts
	total := accounts + e.cfg.RSSEvents
	e.progress("rss: producing %d records to %s", total, topic)
	if err := e.produceStream(ctx, cl, accounts, e.cfg.RSSEvents); err != nil {
		return err
	}

	ac := e.applierConfig(e.cfg.Applier, topic, e.name("rss"))
	args := []string{"apply",
		"--brokers", strings.Join(e.broker.Addrs(), ","),
		"--topic", topic,
		"--group", ac.Group,
		"--database-url", e.cfg.DatabaseURL,
		"--schema", schemaName,
		"--log-level", "warn",
		"--batch-records", strconv.Itoa(ac.MaxBatchRecords),
		"--batch-bytes", strconv.Itoa(ac.MaxBatchBytes),
		"--apply-concurrency", strconv.Itoa(ac.Concurrency),
		"--batch-linger", ac.Linger.String(),
		"--metrics-listen", "",
	}
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = withoutHeedEnv(os.Environ())
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 15 * time.Second
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s apply: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	stopChild := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			return err
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			return fmt.Errorf("heed apply did not stop within 15s of SIGTERM")
		}
	}

	var peak int64
	marks := []float64{0.25, 0.5, 0.75, 1}
	var byMark []float64
	lastReport := start
	for {
		kb, err := rssKiB(cmd.Process.Pid)
		if err != nil {
			select {
			case werr := <-exited:
				return fmt.Errorf("heed apply exited (%v): %s", werr, stderr.tail())
			default:
				_ = stopChild()
				return err
			}
		}
		peak = max(peak, kb)
		var done int64
		if err := pool.QueryRow(ctx, `SELECT coalesce(sum(next_offset), 0) FROM applied_positions WHERE topic = $1`, topic).Scan(&done); err != nil {
			_ = stopChild()
			return fmt.Errorf("read the applied positions: %w", err)
		}
		for len(byMark) < len(marks) && float64(done) >= marks[len(byMark)]*float64(total) {
			byMark = append(byMark, float64(kb)/1024)
		}
		if done >= int64(total) {
			break
		}
		if time.Since(lastReport) >= 5*time.Second {
			lastReport = time.Now()
			e.progress("rss: %d/%d applied, heed apply RSS %.0f MiB (peak %.0f)", done, total, float64(kb)/1024, float64(peak)/1024)
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("heed apply exited before applying everything (%v): %s", werr, stderr.tail())
		case <-ctx.Done():
			_ = stopChild()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	elapsed := time.Since(start)
	if err := stopChild(); err != nil {
		return fmt.Errorf("stop heed apply: %w: %s", err, stderr.tail())
	}
	if err := checkLedger(ctx, pool, accounts, int64(e.cfg.RSSEvents), int64(total)); err != nil {
		return err
	}
	if err := e.auditRSS(ctx, exe, topic, schemaName, total, r); err != nil {
		return err
	}
	r.RSSEvents = total
	r.RSSApplier = float64(total) / elapsed.Seconds()
	r.RSSPeakMiB = float64(peak) / 1024
	r.RSSByQuarter = byMark
	e.progress("rss: %d events at %.0f events/s (process start included), peak RSS %.1f MiB, at 25/50/75/100%%: %.1f MiB",
		total, r.RSSApplier, r.RSSPeakMiB, byMark)
	return nil
}

// auditRSS runs heed audit as a process over the topic the rss phase drained
// and samples its resident memory: the audit must fit in what the applier
// used (issue 19), and find the projection consistent.
func (e *env) auditRSS(ctx context.Context, exe, topic, schemaName string, total int, r *Result) error {
	cmd := exec.CommandContext(ctx, exe, "audit",
		"--brokers", strings.Join(e.broker.Addrs(), ","),
		"--topic", topic,
		"--database-url", e.cfg.DatabaseURL,
		"--schema", schemaName,
		"--json")
	cmd.Env = withoutHeedEnv(os.Environ())
	var stdout, stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s audit: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	var peak int64
	for {
		if kb, err := rssKiB(cmd.Process.Pid); err == nil {
			peak = max(peak, kb)
		}
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("heed audit: %v: %s", err, stderr.tail())
			}
			var rep struct {
				Records int64 `json:"records"`
				Skipped int64 `json:"skipped"`
				Orphans int64 `json:"orphans"`
			}
			if err := json.Unmarshal(stdout.bytes(), &rep); err != nil {
				return fmt.Errorf("heed audit --json: %w", err)
			}
			if rep.Records != int64(total) || rep.Skipped != 0 || rep.Orphans != 0 {
				return fmt.Errorf("WRONG RESULT: heed audit read %d records (want %d), found %d skipped and %d orphans (want 0)", rep.Records, total, rep.Skipped, rep.Orphans)
			}
			r.AuditSeconds = time.Since(start).Seconds()
			r.AuditPeakMiB = float64(peak) / 1024
			e.progress("rss: heed audit read %d records in %.1fs, peak RSS %.1f MiB", total, r.AuditSeconds, r.AuditPeakMiB)
			return nil
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// produceStream produces the log generate builds, chunk by chunk, so that the
// benchmark holds only what the broker holds.
func (e *env) produceStream(ctx context.Context, cl *kgo.Client, accounts, deposits int) error {
	const chunk = 50_000
	total := accounts + deposits
	recs := make([]*kgo.Record, 0, chunk)
	produced := 0
	flush := func() error {
		if err := cl.ProduceSync(ctx, recs...).FirstErr(); err != nil {
			return fmt.Errorf("produce to the embedded broker: %w", err)
		}
		produced += len(recs)
		recs = recs[:0]
		if produced%(10*chunk) == 0 {
			e.progress("produced %d/%d records", produced, total)
		}
		return nil
	}
	err := generate(accounts, deposits, randomIDs, func(ev event) error {
		r := ev.rec
		recs = append(recs, &r)
		if len(recs) == chunk {
			return flush()
		}
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}

// rssKiB reads VmRSS of a process.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmRSS:"); ok {
			return strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// withoutHeedEnv drops HEED_* variables, so that the child runs with exactly
// the flags the benchmark passes.
func withoutHeedEnv(environ []string) []string {
	var out []string
	for _, kv := range environ {
		if !strings.HasPrefix(kv, "HEED_") {
			out = append(out, kv)
		}
	}
	return out
}

// lockedBuffer collects a child's stderr.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]byte(nil), b.buf.Bytes()...)
}

func (b *lockedBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := strings.TrimSpace(b.buf.String())
	if len(s) > 2000 {
		s = "…" + s[len(s)-2000:]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}
