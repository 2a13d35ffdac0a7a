#!/usr/bin/env bash
# Builds SeaweedFS's `weed` (Apache-2.0; the S3-compatible object store of the tests) from
# the Go module proxy into a versioned cache outside the clone:
#   ${KUBEINFER_CACHE:-~/.cache/kubeinfer}/seaweedfs/<SEAWEEDFS_VERSION>/weed
# The version comes from hack/versions.env only. devkit.s3server runs the binary.
#
# Usage: hack/build-seaweedfs.sh [build|path]
#   build  (default) build once; a warm cache (binary present + stamp matching the version
#          and the Go version) returns at once
#   path   print where the binary is (built or not)
#
# Not `go install ...@version`: the module's go.mod has replace directives, which go install
# refuses. `go build ./weed` in a writable copy of the module's source honours them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

module=github.com/seaweedfs/seaweedfs
root="${KUBEINFER_CACHE:-${HOME}/.cache/kubeinfer}/seaweedfs/${SEAWEEDFS_VERSION}"
weed="${root}/weed"
stamp="${root}/.stamp"

log() { printf '[s3-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

case "${1:-build}" in
  path) echo "$weed"; exit 0 ;;
  build) ;;
  *) die "unknown command: $1 (build|path)" ;;
esac

command -v go >/dev/null || die "go not found on PATH (Go >= 1.26 is required)"
# As hack/build-controlplane.sh: bounded parallelism on 2 cores, a static binary, the proxy.
export GOMAXPROCS="${GOMAXPROCS:-$(nproc)}"
export GOFLAGS="-buildvcs=false -p=${GOMAXPROCS}"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"
stamp_text="seaweedfs ${SEAWEEDFS_VERSION} $(go env GOVERSION)"

if [[ -x "$weed" && -f "$stamp" && "$(cat "$stamp")" == "$stamp_text" ]]; then
  log "warm cache: ${weed} (seaweedfs ${SEAWEEDFS_VERSION}: nothing to build)"; exit 0
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/kubeinfer-seaweedfs-XXXXXX")"
heartbeat=""
cleanup() {
  [[ -z "$heartbeat" ]] || kill "$heartbeat" 2>/dev/null || true
  chmod -R u+w "$work" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

progress() {  # progress <what> <unit> <log>: every 30 s, the time so far and the lines in <log> (go's one per step)
  local t0=$SECONDS
  while sleep 30; do
    log "$1: $(( (SECONDS - t0) / 60 ))m$(( (SECONDS - t0) % 60 ))s, $(wc -l < "$3") $2 (last: $(tail -n 1 "$3"))"
  done
}

step() {  # step <what> <unit> <log> <command...>: run it with the heartbeat; its log's tail when it fails
  local what="$1" unit="$2" out="$3"; shift 3
  : > "$out"
  progress "$what" "$unit" "$out" &
  heartbeat=$!
  "$@" 2>> "$out" || { tail -n 40 "$out" >&2; die "${what} failed"; }
  kill "$heartbeat"; heartbeat=""
}

t_all=$SECONDS
log "seaweedfs ${SEAWEEDFS_VERSION}: downloading the module source (about 150 MB)"
src="$(cd "$work" && go mod download -json "${module}@${SEAWEEDFS_VERSION}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
# The module cache is read-only; the build runs in a copy.
cp -r "$src" "${work}/src"
chmod -R u+w "${work}/src"
cd "${work}/src"

log "seaweedfs: downloading the modules weed imports (about 1 GB on a cold module cache)"
step "downloading modules" "downloaded" "${work}/download.log" go list -deps -f '{{.ImportPath}}' ./weed > "${work}/packages"
log "seaweedfs: $(grep -c '^go: downloading' "${work}/download.log" || true) modules downloaded;" \
    "compiling weed, $(wc -l < "${work}/packages") packages (the long part: 3-10 minutes on 2 cores)"
mkdir -p "$root"
# -v names each package as it is compiled: the heartbeat counts them.
step "compiling weed" "packages compiled" "${work}/build.log" \
  go build -v -trimpath -ldflags "-s -w -X ${module}/weed/util/version.COMMIT=${SEAWEEDFS_VERSION##*-}" \
    -o "${weed}.tmp" ./weed
mv -f "${weed}.tmp" "$weed"
printf '%s\n' "$stamp_text" > "$stamp"
log "seaweedfs built in $((SECONDS - t_all))s: ${weed} ($(du -m "$weed" | cut -f1) MB; $("$weed" version 2>&1 | head -n 1))"
