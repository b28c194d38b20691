package devstack

import (
	"os/exec"
	"syscall"
)

// capDACReadSearch is CAP_DAC_READ_SEARCH from linux/capability.h.
const capDACReadSearch = 2

// setCredential makes cmd run as uid/gid, keeping CAP_DAC_READ_SEARCH as an
// ambient capability so it can traverse root-only parents of the cluster
// directory (for example /root or a 0700 test temp dir). The capability is
// raised only in the exec'd program: chdir happens before, hence Dir "/".
func setCredential(cmd *exec.Cmd, uid, gid int) {
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential:  &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)},
		AmbientCaps: []uintptr{capDACReadSearch},
	}
}
