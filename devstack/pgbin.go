package devstack

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ErrNoPostgresBinaries is returned (wrapped) by StartCluster and
// ResolvePostgres when no PostgreSQL server binaries (initdb, pg_ctl,
// postgres) can be found. Tests check for it with errors.Is to skip rather
// than fail.
var ErrNoPostgresBinaries = errors.New("no PostgreSQL server binaries (initdb, pg_ctl, postgres) found in PATH, `pg_config --bindir` or /usr/lib/postgresql/*/bin; install the PostgreSQL server package")

// serverBinaries are absolute paths of the PostgreSQL server programs.
type serverBinaries struct {
	initdb, pgCtl string
}

// findServerBinaries looks for a directory holding initdb, pg_ctl and
// postgres: next to initdb found in PATH (symlinks resolved), then
// `pg_config --bindir`, then the highest version under the usual package
// locations.
func findServerBinaries(ctx context.Context) (serverBinaries, error) {
	var dirs []string
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			dirs = append(dirs, filepath.Dir(real))
		}
		dirs = append(dirs, filepath.Dir(p))
	}
	if p, err := exec.LookPath("pg_config"); err == nil {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		out, err := exec.CommandContext(ctx, p, "--bindir").Output()
		cancel()
		if err == nil {
			dirs = append(dirs, strings.TrimSpace(string(out)))
		}
	}
	for _, pattern := range []string{"/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin"} {
		dirs = append(dirs, globByVersion(pattern)...)
	}
	dirs = append(dirs, "/usr/local/pgsql/bin")
	for _, d := range dirs {
		if d == "" {
			continue
		}
		bins := serverBinaries{initdb: filepath.Join(d, "initdb"), pgCtl: filepath.Join(d, "pg_ctl")}
		if isExecutable(bins.initdb) && isExecutable(bins.pgCtl) && isExecutable(filepath.Join(d, "postgres")) {
			return bins, nil
		}
	}
	return serverBinaries{}, ErrNoPostgresBinaries
}

// globByVersion returns the matches of pattern, highest version first. The
// version is the first path element that starts with a digit or holds one
// after '-' or '@'.
func globByVersion(pattern string) []string {
	matches, _ := filepath.Glob(pattern)
	version := func(p string) float64 {
		for _, el := range strings.Split(p, string(filepath.Separator)) {
			if i := strings.LastIndexAny(el, "-@"); i >= 0 {
				el = el[i+1:]
			}
			if v, err := strconv.ParseFloat(el, 64); err == nil {
				return v
			}
		}
		return 0
	}
	sort.SliceStable(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	return matches
}

// isExecutable reports whether path is a regular file with an execute bit.
func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}
