//go:build !linux

package cli

// followGoRun does nothing here: the parent-death signal is Linux's.
func followGoRun() {}
