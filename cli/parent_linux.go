package cli

import (
	"os"
	"strconv"
	"strings"
	"syscall"
)

// followGoRun makes the process end with `go run`: the go command starts the
// built binary as its child and, on SIGTERM, exits without passing it on, so
// heed would keep running (holding its ports and data directory) with no one
// to stop it. When the parent is the go command, the kernel sends SIGTERM here
// when it exits (PR_SET_PDEATHSIG), which stops heed gracefully. Under any
// other parent (a shell, nohup, a supervisor) nothing changes.
func followGoRun() {
	ppid := os.Getppid()
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(ppid) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "go" {
		return
	}
	const prSetPdeathsig = 1
	if _, _, errno := syscall.RawSyscall(syscall.SYS_PRCTL, prSetPdeathsig, uintptr(syscall.SIGTERM), 0); errno != 0 {
		return
	}
	if os.Getppid() != ppid { // the go command exited before the call took effect
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
	}
}
