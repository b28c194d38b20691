//go:build !unix

package devstack

import (
	"errors"
	"os"
)

// errLocked is tryLock's error when another open file holds the lock.
var errLocked = errors.New("locked")

// tryLock does nothing off Unix: there is no flock(2), so data
// directories are not locked there.
func tryLock(*os.File) error { return nil }
