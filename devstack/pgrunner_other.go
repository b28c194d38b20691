//go:build !unix

package devstack

import "os/exec"

// setCredential is never called off Unix: os.Geteuid is -1 there, so we
// are never root.
func setCredential(*exec.Cmd, int, int) {}
