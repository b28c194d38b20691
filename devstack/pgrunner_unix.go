//go:build unix && !linux

package devstack

import (
	"os/exec"
	"syscall"
)

// setCredential makes cmd run as uid/gid. Without Linux ambient
// capabilities, the cluster directory's parents must be traversable by
// that user.
func setCredential(cmd *exec.Cmd, uid, gid int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
	}
}
