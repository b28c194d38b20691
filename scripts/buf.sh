#!/usr/bin/env bash
# Reproducible protobuf tooling with local tools only (no Buf Schema Registry).
#
#   scripts/buf.sh deps        prepare .buf-deps/ (protovalidate's validate.proto)
#   scripts/buf.sh lint        deps + buf lint
#   scripts/buf.sh generate    deps + buf generate, every template (into gen/, examples/booking/gen/,
#                              examples/web/src/gen/: needs `npm ci` in examples/web)
#   scripts/buf.sh check       deps + lint + generate, fail if generated code is stale (CI)
#   scripts/buf.sh breaking [REF]  fail on a wire- or JSON-breaking change against REF (default HEAD~1)
#   scripts/buf.sh buf ARGS... run the pinned buf, e.g. scripts/buf.sh buf curl --help
#
# buf runs via `go run module@version` (kept out of go.mod on purpose: its dependency
# graph is huge); protoc-gen-go and protoc-gen-connect-go are `tool` directives in
# go.mod; validate.proto comes from the Go module github.com/bufbuild/protovalidate;
# the web example's protoc-gen-es is the one its package-lock.json pins, run
# from examples/web/node_modules.
set -euo pipefail

# Pinned versions: change them here only.
BUF_VERSION=v1.75.0
PROTOVALIDATE_VERSION=v1.2.2

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEPS_DIR=.buf-deps
# The generation templates, each writing (and cleaning) one directory: heed's
# gen/ from proto/, the booking example's own from examples/booking/proto, and
# the web example's TypeScript client from proto/ (ledger and command).
TEMPLATES=(buf.gen.yaml examples/booking/buf.gen.yaml examples/web/buf.gen.yaml)
GEN_DIRS=(gen examples/booking/gen examples/web/src/gen)
# The npm-installed plugin examples/web/buf.gen.yaml runs.
PROTOC_GEN_ES=examples/web/node_modules/.bin/protoc-gen-es
# heed's own modules of the workspace (buf.yaml), checked for breaking changes.
PROTO_MODULES=(proto examples/booking/proto)

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
	# directory behaves the same for every buf command. Runs that overlap (tests
	# run buf.sh in parallel) take turns, and one that finds the right version
	# in place leaves it alone: no run sees the directory half replaced.
	dst="$DEPS_DIR/protovalidate"
	mkdir -p "$DEPS_DIR"
	exec 9>"$DEPS_DIR/.lock"
	flock 9
	if [[ "$(cat "$dst/VERSION" 2>/dev/null)" == "github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}" ]]; then
		exec 9>&-
		return 0
	fi
	tmp="$(mktemp -d "$DEPS_DIR/.protovalidate.XXXXXX")"
	chmod 0755 "$tmp"
	(cd "$dir/proto/protovalidate" && find . -name '*.proto' -print0) |
		while IFS= read -r -d '' f; do
			install -D -m 0644 "$dir/proto/protovalidate/$f" "$tmp/$f"
		done
	echo "github.com/bufbuild/protovalidate@${PROTOVALIDATE_VERSION}" >"$tmp/VERSION"
	rm -rf "$dst"
	mv "$tmp" "$dst"
	exec 9>&-
}

lint() {
	run_buf lint
}

generate() {
	local t
	[[ -x $PROTOC_GEN_ES ]] ||
		die "no $PROTOC_GEN_ES (the web example's TypeScript generator): run 'npm ci' in examples/web first"
	for t in "${TEMPLATES[@]}"; do
		run_buf generate --template "$t"
	done
}

check() {
	lint
	generate
	git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "check needs a git work tree"
	local status
	status="$(git status --porcelain --untracked-files=all -- "${GEN_DIRS[@]}")"
	if [[ -n "$status" ]]; then
		{
			echo "buf.sh: generated code in ${GEN_DIRS[*]} is stale (differs from what is committed):"
			echo "$status"
			echo
			echo "fix: run 'scripts/buf.sh generate' and commit the changes in ${GEN_DIRS[*]}."
		} >&2
		exit 1
	fi
	echo "buf.sh: lint clean, ${GEN_DIRS[*]} up to date."
}

# breaking compares each of heed's modules (PROTO_MODULES: proto/ and the
# booking example's) with the same directory at REF (default: the previous
# commit), module by module, since buf compares a whole workspace only with
# one of as many modules: the .proto files there are built into an image in a
# temporary worktree, with the same local protovalidate copy, since a git ref
# holds no .buf-deps/. A module REF does not have yet is new: nothing to
# break. Rules: buf.yaml's breaking section (WIRE_JSON).
breaking() {
	local ref="${1:-HEAD~1}" wt m status=0 failed=()
	git rev-parse --verify --quiet "${ref}^{commit}" >/dev/null ||
		{ echo "buf.sh: breaking: no commit ${ref} in this clone (a shallow clone?): nothing to compare with, skipped"; return 0; }
	wt="$(mktemp -d)"
	git worktree add --detach --quiet "$wt" "$ref"
	mkdir -p "$wt/$DEPS_DIR"
	cp -R "$DEPS_DIR/protovalidate" "$wt/$DEPS_DIR/"
	for m in "${PROTO_MODULES[@]}"; do
		if [[ ! -d "$wt/$m" ]]; then
			echo "buf.sh: breaking: $m/ is new since ${ref}: nothing to compare with"
			continue
		fi
		status=0
		run_buf breaking "$m" --against "$wt/$m" || status=$?
		[[ $status -eq 0 ]] || failed+=("$m/")
	done
	git worktree remove --force "$wt"
	[[ ${#failed[@]} -eq 0 ]] || die "breaking: ${failed[*]} has a wire- or JSON-breaking change against ${ref} (see above); add fields and types instead of changing or removing them (docs/DEPLOY.md)"
	echo "buf.sh: no breaking change in ${PROTO_MODULES[*]} against ${ref} ($(git rev-parse --short "$ref"))."
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
