package bench

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// pgUsage is what Postgres spent, read before and after a phase: the CPU time
// of every postgres process on this machine (zero when none is visible: a
// remote server, or no /proc) and the WAL position.
type pgUsage struct {
	cpu time.Duration
	wal int64
}

// pgUsage reads Postgres's CPU time and WAL position now. Figures it cannot
// read are zero.
func (e *env) pgUsage(ctx context.Context) pgUsage {
	var u pgUsage
	u.cpu = postgresCPU()
	_ = e.admin.QueryRow(ctx, `SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::int8`).Scan(&u.wal)
	return u
}

// perEvent is what Postgres spent per event between u and later.
type perEvent struct {
	// CPU is the CPU time of the postgres processes on this machine, in
	// microseconds (0 when it cannot be seen), WAL the bytes of WAL written.
	CPU float64 `json:"cpu_us"`
	WAL float64 `json:"wal_bytes"`
}

func (u pgUsage) since(before pgUsage, events int) perEvent {
	if events <= 0 {
		return perEvent{}
	}
	return perEvent{
		CPU: float64((u.cpu - before.cpu).Microseconds()) / float64(events),
		WAL: float64(u.wal-before.wal) / float64(events),
	}
}

// postgresCPU sums the user and system CPU time of the processes named
// postgres (the server and its backends), from /proc; 0 where there is none.
// Backends that exit meanwhile take their time with them: the phases keep
// their connections open while they measure.
func postgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	tick := 10 * time.Millisecond // USER_HZ is 100 on Linux
	var total time.Duration
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
		if open < 0 || end < open || string(b[open+1:end]) != "postgres" {
			continue
		}
		f := bytes.Fields(b[end+1:])
		if len(f) < 13 { // state is field 3; utime and stime are 14 and 15
			continue
		}
		ut, _ := strconv.ParseInt(string(f[11]), 10, 64)
		st, _ := strconv.ParseInt(string(f[12]), 10, 64)
		total += time.Duration(ut+st) * tick
	}
	return total
}
