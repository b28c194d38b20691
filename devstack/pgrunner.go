package devstack

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
)

// pgOSUser is the OS user the PostgreSQL programs run as when we are root.
const pgOSUser = "postgres"

// pgRunner builds commands for the PostgreSQL server programs. initdb,
// pg_ctl and postgres refuse to run as root, so as root the commands run as
// pgOSUser (see the package comment); otherwise they run as we do.
type pgRunner struct {
	asUser   bool
	uid, gid int
}

// newPGRunner decides how to run the PostgreSQL programs. It fails when we
// are root and there is no pgOSUser account to switch to.
func newPGRunner() (pgRunner, error) {
	if os.Geteuid() != 0 {
		return pgRunner{}, nil
	}
	u, err := user.Lookup(pgOSUser)
	if err != nil {
		return pgRunner{}, fmt.Errorf("running as root, and PostgreSQL refuses to run as root, but there is no %q OS user to run it as (%w); create one (useradd --system %s), run heed as a regular user, or pass --database-url", pgOSUser, err, pgOSUser)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return pgRunner{}, fmt.Errorf("OS user %q has a non-numeric uid/gid %q/%q; run heed as a regular user or pass --database-url", pgOSUser, u.Uid, u.Gid)
	}
	return pgRunner{asUser: true, uid: uid, gid: gid}, nil
}

// command returns a command running bin with args, as pgOSUser when root.
// All paths passed must be absolute: as pgOSUser the working directory is /.
func (r pgRunner) command(ctx context.Context, bin string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, bin, args...)
	if r.asUser {
		cmd.Dir = "/"
		setCredential(cmd, r.uid, r.gid)
	}
	return cmd
}

// own makes path owned by the user the PostgreSQL programs run as. It does
// nothing unless we are root.
func (r pgRunner) own(path string) error {
	if !r.asUser {
		return nil
	}
	if err := os.Chown(path, r.uid, r.gid); err != nil {
		return fmt.Errorf("give %s to OS user %s: %w; run heed as a regular user or pass --database-url", path, pgOSUser, err)
	}
	return nil
}
