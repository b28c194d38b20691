#!/usr/bin/env bash
# Reproducible protobuf tooling with local tools only (no Buf Schema Registry).
#
#   scripts/buf.sh deps        prepare .buf-deps/ (protovalidate's validate.proto)
#   scripts/buf.sh lint        deps + buf lint
#   scripts/buf.sh generate    deps + buf generate (into gen/)
#   scripts/buf.sh check       deps + lint + generate, fail if gen/ is stale (CI)
#   scripts/buf.sh breaking [REF]  fail on a wire- or JSON-breaking change against REF (default HEAD~1)
#   scripts/buf.sh buf ARGS... run the pinned buf, e.g. scripts/buf.sh buf curl --help
#
# buf runs via `go run module@version` (kept out of go.mod on purpose: its dependency
# graph is huge); protoc-gen-go and protoc-gen-connect-go are `tool` directives in
# go.mod; validate.proto comes from the Go module github.com/bufbuild/protovalidate.
set -euo pipefail

# Pinned versions: change them here only.
BUF_VERSION=v1.75.0
PROTOVALIDATE_VERSION=v1.2.2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEPS_DIR=.buf-deps
GEN_DIR=gen

die() {
	echo "buf.sh: $*" >&2
	exit 1
}

run_buf() {
	go run "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}" "$@"
}

deps() {
	local json dir dst tmp
	json="$(go mod download -json "github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}")" ||
		die "cannot download github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}: ${json}"
	dir="$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")"
	[[ -n "$dir" && -f "$dir/proto/protovalidate/buf/validate/validate.proto" ]] ||
		die "no proto/protovalidate/buf/validate/validate.proto in module dir '${dir}'"

	# Copy (not symlink) the .proto files: the module cache is read-only, and a plain
	# directory behaves the same for every buf command. Replace atomically.
	dst="$DEPS_DIR/protovalidate"
	mkdir -p "$DEPS_DIR"
	tmp="$(mktemp -d "$DEPS_DIR/.protovalidate.XXXXXX")"
	chmod 0755 "$tmp"
	(cd "$dir/proto/protovalidate" && find . -name '*.proto' -print0) |
		while IFS= read -r -d '' f; do
			install -D -m 0644 "$dir/proto/protovalidate/$f" "$tmp/$f"
		done
	echo "github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}" >"$tmp/VERSION"
	rm -rf "$dst"
	mv "$tmp" "$dst"
}

lint() {
	run_buf lint
}

generate() {
	run_buf generate
}

check() {
	lint
	generate
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "check needs a git work tree"
	local status
	status="$(git status --porcelain --untracked-files=all -- "$GEN_DIR/")"
	if [[ -n "$status" ]]; then
		{
			echo "buf.sh: generated code in $GEN_DIR/ is stale (differs from what is committed):"
			echo "$status"
			echo
			echo "fix: run 'scripts/buf.sh generate' and commit the changes in $GEN_DIR/."
		} >&2
		exit 1
	fi
	echo "buf.sh: lint clean, $GEN_DIR/ up to date."
}

# breaking compares proto/ with the same tree at REF (default: the previous
# commit): the .proto files there are built into an image in a temporary
# worktree, with the same local protovalidate copy, since a git ref holds no
# .buf-deps/. Rules: buf.yaml's breaking section (WIRE_JSON).
breaking() {
	local ref="${1:-HEAD~1}" wt status=0
	git rev-parse --verify --quiet "${ref}^{commit}" >/dev/null ||
		{ echo "buf.sh: breaking: no commit ${ref} in this clone (a shallow clone?): nothing to compare with, skipped"; return 0; }
	wt="$(mktemp -d)"
	git worktree add --detach --quiet "$wt" "$ref"
	mkdir -p "$wt/$DEPS_DIR"
	cp -R "$DEPS_DIR/protovalidate" "$wt/$DEPS_DIR/"
	run_buf breaking --against "$wt" || status=$?
	git worktree remove --force "$wt"
	[[ $status -eq 0 ]] || die "breaking: proto/ has a wire- or JSON-breaking change against ${ref} (see above); add fields and types instead of changing or removing them (docs/DEPLOY.md)"
	echo "buf.sh: no breaking change in proto/ against ${ref} ($(git rev-parse --short "$ref"))."
}

usage() {
	sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
# Keep these as ';' sequences: errexit is ignored inside functions run left of '&&'.
deps) deps ;;
lint) deps; lint ;;
generate) deps; generate ;;
check) deps; check ;;
breaking) deps; breaking "$@" ;;
buf) deps; run_buf "$@" ;;
*) usage ;;
esac
