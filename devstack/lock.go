package devstack

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// LockFile is the name of the file in a data directory that LockDataDir
// locks and that records who holds the lock.
const LockFile = "LOCK"

// Holder describes the process holding a data directory's lock, as
// recorded in the directory's lock file.
type Holder struct {
	PID     int       `json:"pid"`
	Program string    `json:"program"`          // what runs, e.g. "heed dev"
	Broker  string    `json:"broker,omitempty"` // the broker's listen address
	Since   time.Time `json:"since"`
}

// String describes the holder for a message, e.g. "heed dev (pid 1234,
// broker 127.0.0.1:9092, since 14:03:11)"; fields the lock file did not
// record are left out.
func (h Holder) String() string {
	who := h.Program
	if who == "" {
		who = "another process"
	}
	var details []string
	if h.PID > 0 {
		details = append(details, fmt.Sprintf("pid %d", h.PID))
	}
	if h.Broker != "" {
		details = append(details, "broker "+h.Broker)
	}
	if !h.Since.IsZero() {
		details = append(details, "since "+clockOrDate(h.Since))
	}
	if len(details) == 0 {
		return who
	}
	return who + " (" + strings.Join(details, ", ") + ")"
}

// clockOrDate formats t as a local wall clock time, with the date when t
// is not today.
func clockOrDate(t time.Time) string {
	t = t.Local()
	if t.Format(time.DateOnly) == time.Now().Format(time.DateOnly) {
		return t.Format(time.TimeOnly)
	}
	return t.Format(time.DateTime)
}

// DataDirInUseError is returned by LockDataDir (and StartBroker) when
// another process, or another lock in this process, holds the directory.
type DataDirInUseError struct {
	Dir    string
	Holder Holder // as read from the lock file; zero if it names no one yet
}

// Problem says what is wrong without a fix: "data dir DIR is in use by
// HOLDER". Callers that know the flag or setting that picks the directory
// add their own fix to it.
func (e *DataDirInUseError) Problem() string {
	return fmt.Sprintf("data dir %s is in use by %s", e.Dir, e.Holder)
}

func (e *DataDirInUseError) Error() string {
	return e.Problem() + ": stop it, or use another data dir"
}

// DataDirLock is an exclusive lock on a data directory: an flock(2) on the
// directory's LOCK file, which also records the Holder. The kernel drops
// the lock when the process exits, however it exits, so a crash leaves no
// stale lock; the file's content is then stale and the next holder
// overwrites it.
//
// Concurrency: all methods are safe for concurrent use.
type DataDirLock struct {
	dir string

	mu     sync.Mutex
	f      *os.File // nil once released
	holder Holder
}

// LockDataDir creates dir if needed, locks it exclusively without waiting
// and records holder in its lock file. A zero holder.PID becomes this
// process's, a zero Since now, and an empty Program the executable's base
// name. Release the lock with Release.
//
// Errors: *DataDirInUseError when the directory is locked already, by
// another process or by another DataDirLock of this one; the directory or
// the lock file not being creatable or writable.
func LockDataDir(dir string, holder Holder) (*DataDirLock, error) {
	if holder.PID == 0 {
		holder.PID = os.Getpid()
	}
	if holder.Since.IsZero() {
		holder.Since = time.Now()
	}
	if holder.Program == "" {
		holder.Program = filepath.Base(os.Args[0])
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock data dir: %w", err)
	}
	path := filepath.Join(dir, LockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	if err := tryLock(f); err != nil {
		f.Close()
		if errors.Is(err, errLocked) {
			return nil, &DataDirInUseError{Dir: dir, Holder: readHolder(path)}
		}
		return nil, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	l := &DataDirLock{dir: dir, f: f, holder: holder}
	if err := l.write(); err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// Dir returns the locked directory, as given to LockDataDir.
func (l *DataDirLock) Dir() string { return l.dir }

// Holder returns what the lock file records.
func (l *DataDirLock) Holder() Holder {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.holder
}

// setBroker records the broker's listen address in the lock file.
func (l *DataDirLock) setBroker(addr string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("lock of data dir %s is released", l.dir)
	}
	l.holder.Broker = addr
	return l.writeLocked()
}

func (l *DataDirLock) write() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.writeLocked()
}

// writeLocked rewrites the lock file with l.holder; l.mu is held.
func (l *DataDirLock) writeLocked() error {
	b, err := json.MarshalIndent(l.holder, "", "  ")
	if err != nil {
		return fmt.Errorf("record the holder of data dir %s: %w", l.dir, err)
	}
	b = append(b, '\n')
	if err := l.f.Truncate(0); err != nil {
		return fmt.Errorf("record the holder of data dir %s: %w", l.dir, err)
	}
	if _, err := l.f.WriteAt(b, 0); err != nil {
		return fmt.Errorf("record the holder of data dir %s: %w", l.dir, err)
	}
	return nil
}

// Release empties the lock file and unlocks the directory. The file itself
// stays: removing it would let two processes lock two different files of
// the same name. Calling Release again does nothing.
func (l *DataDirLock) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return
	}
	_ = l.f.Truncate(0) // a stale record is harmless: the next holder overwrites it
	_ = l.f.Close()     // closing the last descriptor drops the flock
	l.f = nil
}

// readHolder reads the holder recorded in the lock file at path; a file
// that cannot be read or parsed (being written, or written by hand) gives
// the zero Holder.
func readHolder(path string) Holder {
	var h Holder
	b, err := os.ReadFile(path)
	if err != nil {
		return Holder{}
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return Holder{}
	}
	return h
}
