package testenv

import (
	"context"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BuildHeed builds the heed binary (./cmd/heed of this module) into a fresh
// tb.TempDir and returns its path; tags, if any, are build tags
// (failpoints). A missing go tool follows the Require policy.
func BuildHeed(tb testing.TB, tags ...string) string {
	tb.Helper()
	return BuildBinary(tb, "./cmd/heed", tags...)
}

// BuildBinary builds the main package pkg, a path from this module's root
// (./examples/booking/cmd/booking), into a fresh tb.TempDir and returns its
// path, the binary named after pkg's last element; tags, if any, are build
// tags (failpoints). A missing go tool follows the Require policy.
func BuildBinary(tb testing.TB, pkg string, tags ...string) string {
	tb.Helper()
	goBin := LookPath(tb, "go")
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Minute)
	defer cancel()
	mod, err := exec.CommandContext(ctx, goBin, "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(mod)) == "" {
		tb.Fatalf("testenv: find the module root (go env GOMOD): %v", err)
	}
	bin := filepath.Join(tb.TempDir(), path.Base(pkg))
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.CommandContext(ctx, goBin, append(args, pkg)...)
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	if out, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("testenv: go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}
