#!/usr/bin/env bash
# Builds the project's container images locally with buildah, without a Docker
# engine or a registry, into a cache outside the clone:
#   ${KUBEINFER_CACHE:-~/.cache/kubeinfer}/images/
#     base/        the Debian rootfs tarball (debootstrap --variant=minbase) and the
#                  build context of the stand-in base image
#     storage/     containers storage (graph + run) of our own; conf/ holds the
#                  storage.conf, containers.conf and registries.conf pointing at it
#     archives/    docker-archive tarballs, <role>-<input hash>.tar, with the image's
#                  `pip freeze` beside each (<role>-<hash>.freeze.txt); per image the
#                  current one and the one before it are kept. The archives are the
#                  product: the storage only caches layers (its tags: the last build).
#     current.json the manifest the local cluster reads to `ctr images import`:
#                  {"images": [{"name", "archive", "id", "role"}, ...]}
#
# Images (names as a pod spec resolves them):
#   docker.io/<chart image.repository>:<image.tag>                 images/operator.Dockerfile
#   docker.io/<chart server.image.repository>:<server.image.tag>   images/server-cpu.Dockerfile
#   PAUSE_IMAGE (below)   the pod sandbox image: images/pause/pause.c, static, USER 65535
# Repositories and tags are read from charts/kubeinfer/values.yaml (what the chart
# deploys); the pause image's name is PAUSE_IMAGE and nowhere else (`pause-image`).
#
# The Dockerfiles are built unchanged. Their FROM (python:3.11.13-slim-bookworm)
# cannot be pulled here, so a stand-in is made and tagged with the exact name the
# FROM resolves to: Debian bookworm minbase + Debian's python3 (3.11.2, /usr/bin)
# + the host's CA certificates (pip in the build goes through the host's TLS proxy).
#
# Usage: hack/build-images.sh [build|manifest|archive-dir|names|pause-image|env]
#   build        (default) build what is missing, write and print the manifest path
#   manifest     print the manifest path (fails if nothing was built yet)
#   archive-dir  print the directory holding the archives
#   names        print the image names: operator, server, pause
#   pause-image  print the pause image name
#   env          print the CONTAINERS_* exports for podman/buildah on our storage
#   check-freeze FREEZE [CONSTRAINTS]  the pin check the build runs on each image
#
# An image whose inputs (pyproject.toml, README.md, server/, operator/,
# images/constraints.txt, the Dockerfile and its .dockerignore, the base image)
# hash to an existing archive is not built again: a warm run takes seconds.
set -euo pipefail

PAUSE_IMAGE="localhost/kubeinfer/pause:3.10"
# Bump to rebuild everything (a change to how the images are made).
RECIPE=1

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
root="${KUBEINFER_CACHE:-${HOME}/.cache/kubeinfer}/images"
conf="${root}/conf"
storage="${root}/storage"
archives="${root}/archives"
basedir="${root}/base"
manifest="${root}/current.json"
values="${repo}/charts/kubeinfer/values.yaml"
constraints="${repo}/images/constraints.txt"
suite=bookworm
rootfs_image="localhost/kubeinfer/debian-${suite}-minbase:latest"
base_packages=(python3 python3-venv python3-pip python-is-python3 ca-certificates)

log() { printf '[images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s; }

# --- names ----------------------------------------------------------------------

# values_get <dotted.key>: a scalar from values.yaml (block mappings only; stdlib).
values_get() {
  python3 - "$values" "$1" <<'EOF'
import re, sys
path, want = sys.argv[1], sys.argv[2]
stack = []  # (indent, key)
for raw in open(path, encoding="utf-8"):
    line = raw.rstrip("\n")
    m = re.match(r"^( *)([A-Za-z0-9_.-]+):(?:\s+(.*?))?\s*$", line)
    if not m or line.lstrip().startswith("#"):
        continue
    indent, key, value = len(m.group(1)), m.group(2), m.group(3) or ""
    while stack and stack[-1][0] >= indent:
        stack.pop()
    stack.append((indent, key))
    if ".".join(k for _, k in stack) == want:
        value = re.sub(r"\s+#.*$", "", value).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not value:
            sys.exit(f"{path}: {want} is empty")
        print(value)
        sys.exit(0)
sys.exit(f"{path}: no {want}")
EOF
}

# normalize <ref>: the fully qualified name containerd and podman resolve a short name to.
normalize() {
  local ref="$1" first="${1%%/*}"
  if [[ "$ref" != */* ]]; then
    echo "docker.io/library/${ref}"
  elif [[ "$first" == *.* || "$first" == *:* || "$first" == localhost ]]; then
    echo "$ref"
  else
    echo "docker.io/${ref}"
  fi
}

chart_image() {  # chart_image <values key of the image mapping>
  local repository tag
  repository="$(values_get "${1}.repository")"
  tag="$(values_get "${1}.tag")"
  normalize "${repository}:${tag}"
}
operator_image() { chart_image image; }
server_image() { chart_image server.image; }

# base_image: the one name every FROM of the two Dockerfiles uses.
base_image() {
  local froms
  froms="$(awk 'toupper($1) == "FROM" { print $2 }' "${repo}/images/server-cpu.Dockerfile" \
    "${repo}/images/operator.Dockerfile" | sort -u)"
  [[ "$(wc -l <<<"$froms")" == 1 ]] || die "the Dockerfiles use more than one base: ${froms//$'\n'/ }"
  normalize "$froms"
}

# --- containers configuration of our own -----------------------------------------

write_conf() {
  mkdir -p "$conf" "${storage}/graph" "${storage}/run" "${storage}/tmp"
  # The run root is on disk here; after a reboot its state is stale: start it afresh.
  local boot; boot="$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown)"
  if [[ "$(cat "${storage}/boot_id" 2>/dev/null)" != "$boot" ]]; then
    rm -rf "${storage}/run" "${storage}/tmp"; mkdir -p "${storage}/run" "${storage}/tmp"
    echo "$boot" >"${storage}/boot_id"
  fi
  cat >"${conf}/storage.conf.new" <<EOF
[storage]
driver = "overlay"
graphroot = "${storage}/graph"
runroot = "${storage}/run"
EOF
  # runc, not crun: crun refuses this host's hybrid cgroups. nofile within the host's
  # hard limit (20000): podman's default is above it and setrlimit fails.
  local nofile nproc
  nofile="$(ulimit -Hn)"; nproc="$(ulimit -Hu)"
  if [[ "$nofile" == unlimited || "$nofile" -gt 20000 ]]; then nofile=20000; fi
  if [[ "$nproc" == unlimited || "$nproc" -gt 32768 ]]; then nproc=32768; fi
  cat >"${conf}/containers.conf.new" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "${storage}/run/events.log"
runtime = "runc"
tmp_dir = "${storage}/tmp"
EOF
  # No registry is reachable: resolve short names to docker.io, never ask.
  cat >"${conf}/registries.conf.new" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
  local f; for f in storage containers registries; do
    if cmp -s "${conf}/${f}.conf.new" "${conf}/${f}.conf"; then rm "${conf}/${f}.conf.new"
    else mv "${conf}/${f}.conf.new" "${conf}/${f}.conf"; fi
  done
  export CONTAINERS_STORAGE_CONF="${conf}/storage.conf"
  export CONTAINERS_CONF="${conf}/containers.conf"
  export CONTAINERS_REGISTRIES_CONF="${conf}/registries.conf"
  export BUILDAH_ISOLATION=oci
}

need_tools() {
  local t missing=()
  for t in buildah podman debootstrap runc gcc git python3 tar sha256sum flock; do
    command -v "$t" >/dev/null || missing+=("$t")
  done
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]} (make images-deps installs them)"
  [[ "$(id -u)" == 0 ]] || die "needs root (debootstrap, overlay storage)"
}

image_id() { buildah inspect --type image --format '{{.FromImageID}}' "$1" 2>/dev/null; }

# --- the stand-in base image -----------------------------------------------------

# mirror [security]: the Debian mirror the host's apt sources use.
host_mirror() {
  local want="$1" files=() f uri=""
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] && files+=("$f")
  done
  ((${#files[@]})) && uri="$(python3 - "$want" "$suite" "${files[@]}" <<'EOF'
import sys
want, suite, files = sys.argv[1], sys.argv[2], sys.argv[3:]
target = suite + "-security" if want == "security" else suite
for path in files:
    text = open(path, encoding="utf-8").read()
    if path.endswith(".sources"):
        for stanza in text.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.split()
            if target in fields.get("suites", []) and "deb" in fields.get("types", []):
                print(fields["uris"][0]); sys.exit()
    else:
        for line in text.splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and words[2] == target:
                print(words[1]); sys.exit()
EOF
)"
  if [[ -z "$uri" ]]; then
    [[ "$want" == security ]] && uri=http://deb.debian.org/debian-security || uri=http://deb.debian.org/debian
  fi
  echo "${uri%/}"
}

cleanup_rootfs() {  # unmount whatever debootstrap left mounted under $1, then remove it
  local dir="$1" m
  [[ -d "$dir" ]] || return 0
  while read -r m; do umount -l "$m" 2>/dev/null || true
  done < <(awk -v d="$dir" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
  rm -rf "$dir"
}

make_rootfs() {  # debootstrap minbase -> ${basedir}/rootfs-<suite>-minbase.tar
  local mirror security tar="${basedir}/rootfs-${suite}-minbase.tar" dir
  if [[ -s "$tar" ]]; then return 0; fi
  mirror="$(host_mirror main)"; security="$(host_mirror security)"
  dir="${basedir}/rootfs.tmp"
  cleanup_rootfs "$dir"; mkdir -p "$dir"
  trap 'cleanup_rootfs "'"$dir"'"' EXIT
  log "base: debootstrap --variant=minbase ${suite} from ${mirror} (about a minute)"
  debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"${basedir}/debootstrap.log" 2>&1 \
    || { tail -20 "${basedir}/debootstrap.log" >&2; die "debootstrap failed (${basedir}/debootstrap.log)"; }
  cat >"${dir}/etc/apt/sources.list" <<EOF
deb ${mirror} ${suite} main
deb ${mirror} ${suite}-updates main
deb ${security} ${suite}-security main
EOF
  rm -rf "${dir}"/var/cache/apt/archives/*.deb "${dir}"/var/cache/apt/*.bin "${dir}"/var/lib/apt/lists/* \
    "${dir}"/var/log/* "${dir}"/tmp/*
  log "base: packing the rootfs"
  tar --numeric-owner -C "$dir" -cf "${tar}.tmp" .
  mv "${tar}.tmp" "$tar"
  cleanup_rootfs "$dir"
  trap - EXIT
  log "base: rootfs $(du -h "$tar" | cut -f1) at ${tar}"
}

build_base() {  # build_base <name>: sets base_id (and cached=1 when it was there)
  local name="$1" ctx="${basedir}/context" key rootfs_id f
  mkdir -p "$basedir"
  make_rootfs
  rootfs_id="$(image_id "$rootfs_image" || true)"
  if [[ -z "$rootfs_id" ]]; then
    log "base: importing the rootfs as ${rootfs_image}"
    podman import --quiet "${basedir}/rootfs-${suite}-minbase.tar" "$rootfs_image" >/dev/null
    rootfs_id="$(image_id "$rootfs_image")"
  fi
  rm -rf "$ctx"; mkdir -p "${ctx}/certs"
  # The host's extra CAs (its TLS-intercepting proxy among them): pip in the image
  # builds must trust them, whatever bundle it looks at.
  for f in /usr/local/share/ca-certificates/*.crt /usr/local/share/ca-certificates/*/*.crt; do
    [[ -f "$f" ]] && cp "$f" "${ctx}/certs/$(basename "$f")"
  done
  cat >"${ctx}/Containerfile" <<EOF
FROM ${rootfs_image}
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${base_packages[*]} \\
 && update-ca-certificates \\
 && printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf \\
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
ENV LANG=C.UTF-8 SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
EOF
  key="$( { echo "recipe ${RECIPE}"; echo "$rootfs_id"; cat "${ctx}/Containerfile"; \
    (cd "$ctx" && find certs -type f -print0 | sort -z | xargs -0r sha256sum); } | sha256sum | cut -c1-16)"
  base_id="$(image_id "$name" || true)"
  if [[ -n "$base_id" && "$(cat "${basedir}/key-${base_id#sha256:}" 2>/dev/null)" == "$key" ]]; then
    cached=1; return 0
  fi
  log "base: ${name} = Debian ${suite} + ${base_packages[*]} + the host's CAs"
  buildah bud --pull=never --network host --format docker --layers=false \
    -f "${ctx}/Containerfile" -t "$name" "$ctx" >"${basedir}/build.log" 2>&1 \
    || { tail -30 "${basedir}/build.log" >&2; die "base image build failed (${basedir}/build.log)"; }
  base_id="$(image_id "$name")"
  rm -f "${basedir}"/key-*
  echo "$key" >"${basedir}/key-${base_id#sha256:}"
  log "base: ${name} $(image_size "$name")"
}

image_size() { podman image inspect --format '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'; }

# --- the project images ------------------------------------------------------------

# inputs_hash <dockerfile>: what the Dockerfile copies (git-tracked and untracked
# non-ignored files, without what .dockerignore drops), the Dockerfile, the base.
inputs_hash() {
  local df="$1"
  (
    cd "$repo"
    echo "recipe ${RECIPE} base ${base_id}"
    local paths=(pyproject.toml README.md server operator images/constraints.txt "$df" "${df}.dockerignore")
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      git ls-files -z -c -o --exclude-standard -- "${paths[@]}"
    else
      find "${paths[@]}" -type f -print0
    fi | sort -zu | grep -zvE '(^|/)__pycache__/|\.pyc$|\.onnx$' \
      | while IFS= read -r -d '' f; do if [[ -f "$f" ]]; then printf '%s\0' "$f"; fi; done \
      | xargs -0r sha256sum
  ) | sha256sum | cut -c1-16
}

# check_freeze <freeze> [constraints]: one line naming every distribution installed
# that constraints.txt does not pin at that version (the project itself excluded).
check_freeze() {
  python3 - "$1" "${2:-$constraints}" <<'EOF'
import re, sys
def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()
pins = {}
for line in open(sys.argv[2], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if "==" in line:
        name, version = line.split("==", 1)
        pins[norm(name)] = version.strip()
bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    if " @ " in line:
        name, version = line.split(" @ ", 1)[0], "@"
    else:
        name, _, version = line.partition("==")
    name = name.strip()
    if norm(name) == "kubeinfer":
        continue
    if pins.get(norm(name)) != version:
        bad.append(line if pins.get(norm(name)) is None else f"{line} (pinned {pins[norm(name)]})")
if bad:
    sys.exit(f"not pinned in images/constraints.txt: {', '.join(bad)}")
EOF
}

# archive_id <archive>: the image ID (config digest) containerd will see.
archive_id() {
  tar -xOf "$1" manifest.json | python3 -c '
import json, sys
config = json.load(sys.stdin)[0]["Config"]
print("sha256:" + config.rsplit("/", 1)[-1].removesuffix(".json"))'
}

push_archive() {  # push_archive <image> <archive>
  rm -f "$2" "${2}.tmp"
  buildah push --quiet --format docker "$1" "docker-archive:${2}.tmp:${1}" >/dev/null
  mv "${2}.tmp" "$2"
}

prune_old() {  # prune_old <role> <current>: keeps the current archive and the one before it
  # (a reader of the previous manifest may still be importing it; a revert finds it again).
  local f n=0
  while IFS= read -r f; do
    [[ "$f" == "$2" ]] && continue
    n=$((n + 1))
    if ((n > 1)); then rm -f "$f" "${f%.tar}.freeze.txt"; fi
  done < <(ls -1t "${archives}/${1}"-*.tar 2>/dev/null)
  for f in "${archives}/${1}"-*.freeze.txt; do  # those of builds that failed the pin check
    if [[ ! -e "${f%.freeze.txt}.tar" ]]; then rm -f "$f"; fi
  done
}

build_project_image() {  # build_project_image <role> <name> <dockerfile>: sets archive (cached=1)
  local role="$1" name="$2" df="$3" hash freeze
  hash="$(inputs_hash "$df")"
  archive="${archives}/${role}-${hash}.tar"
  if [[ -s "$archive" && -s "${archive%.tar}.freeze.txt" ]]; then cached=1; return 0; fi
  log "${role}: building ${name} from ${df} (inputs ${hash}; pip downloads from PyPI, about a minute)"
  (cd "$repo" && buildah bud --layers --pull=never --network host --format docker \
      -f "$df" -t "$name" .) >"${archives}/${role}-build.log" 2>&1 \
    || { tail -30 "${archives}/${role}-build.log" >&2; die "${role}: buildah bud failed (${archives}/${role}-build.log)"; }
  log "${role}: pip freeze inside the image"
  freeze="${archive%.tar}.freeze.txt"
  podman run --rm --pull=never --network none --entrypoint /opt/kubeinfer/bin/pip "$name" \
    freeze --disable-pip-version-check >"${freeze}.tmp" 2>"${archives}/${role}-freeze.err" \
    || { cat "${archives}/${role}-freeze.err" >&2; die "${role}: pip freeze failed in ${name}"; }
  mv "${freeze}.tmp" "$freeze"
  local msg
  msg="$(check_freeze "$freeze" 2>&1)" || die "${role} image ${name}: ${msg}"
  log "${role}: $(grep -vc '^kubeinfer' "$freeze") distributions, all pinned; writing the docker archive"
  push_archive "$name" "$archive"
  prune_old "$role" "$archive"
  log "${role}: ${name} $(image_size "$name"), archive $(du -h "$archive" | cut -f1)"
}

build_pause() {  # sets archive (cached=1)
  local src="${repo}/images/pause/pause.c" hash dir ctr
  hash="$( { echo "recipe ${RECIPE} ${PAUSE_IMAGE}"; gcc --version | head -1; cat "$src"; } | sha256sum | cut -c1-16)"
  archive="${archives}/pause-${hash}.tar"
  if [[ -s "$archive" ]]; then cached=1; return 0; fi
  log "pause: gcc -static -Os images/pause/pause.c -> ${PAUSE_IMAGE}"
  dir="$(mktemp -d)"
  gcc -static -Os -s -Wall -Wextra -Werror -o "${dir}/pause" "$src" || { rm -rf "$dir"; die "pause: gcc failed"; }
  ctr="$(buildah from --pull=never scratch)"
  if ! { buildah copy --quiet --chmod 0755 "$ctr" "${dir}/pause" /pause >/dev/null \
      && buildah config --entrypoint '["/pause"]' --user 65535:65535 --workingdir / \
        --label "org.opencontainers.image.source=images/pause/pause.c" "$ctr" \
      && buildah commit --quiet --format docker --rm "$ctr" "$PAUSE_IMAGE" >/dev/null; }; then
    buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$dir"
    die "pause: making the image failed"
  fi
  rm -rf "$dir"
  push_archive "$PAUSE_IMAGE" "$archive"
  prune_old pause "$archive"
  log "pause: ${PAUSE_IMAGE} $(image_size "$PAUSE_IMAGE")"
}

# --- main --------------------------------------------------------------------------

timings=()
built=0
step() {  # step <label> <function> [args...]: runs it, records its seconds or "cached"
  local label="$1" t0; shift
  t0="$(now)"; cached=0
  "$@"
  if ((cached)); then timings+=("${label}=cached")
  else timings+=("${label}=$(($(now) - t0))s"); [[ "$label" == base ]] || built=1; fi
}

write_manifest() {  # write_manifest {role name archive id}...
  python3 - "$manifest" "$@" <<'EOF'
import json, os, sys
path, args = sys.argv[1], sys.argv[2:]
images = [
    {"name": args[i + 1], "archive": args[i + 2], "id": args[i + 3], "role": args[i]}
    for i in range(0, len(args), 4)
]
with open(path + ".tmp", "w", encoding="utf-8") as f:
    json.dump({"images": images}, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
EOF
}

build() {
  need_tools
  mkdir -p "$root" "$archives"
  exec 9>"${root}/.lock"
  flock 9 || die "cannot lock ${root}/.lock"
  write_conf
  local t_start base server operator entries=() id
  t_start="$(now)"
  base="$(base_image)"
  server="$(server_image)"
  operator="$(operator_image)"
  base_id="" archive=""
  step base build_base "$base"
  step server build_project_image server "$server" images/server-cpu.Dockerfile
  id="$(archive_id "$archive")"; entries+=(server "$server" "$archive" "$id")
  step operator build_project_image operator "$operator" images/operator.Dockerfile
  id="$(archive_id "$archive")"; entries+=(operator "$operator" "$archive" "$id")
  step pause build_pause
  id="$(archive_id "$archive")"; entries+=(pause "$PAUSE_IMAGE" "$archive" "$id")
  # Untagged leftovers of earlier builds (images these ones replaced).
  if ((built)); then podman image prune -f >/dev/null 2>&1 || true; fi
  write_manifest "${entries[@]}"
  log "done in $(($(now) - t_start))s: ${timings[*]}"
  echo "$manifest"
}

case "${1:-build}" in
  build) build ;;
  manifest) [[ -s "$manifest" ]] || die "no ${manifest}: run hack/build-images.sh build"; echo "$manifest" ;;
  archive-dir) echo "$archives" ;;
  names) operator_image; server_image; echo "$PAUSE_IMAGE" ;;
  pause-image) echo "$PAUSE_IMAGE" ;;
  env) write_conf
       printf 'export %s=%q\n' CONTAINERS_STORAGE_CONF "$CONTAINERS_STORAGE_CONF" \
         CONTAINERS_CONF "$CONTAINERS_CONF" CONTAINERS_REGISTRIES_CONF "$CONTAINERS_REGISTRIES_CONF" ;;
  check-freeze) [[ $# -ge 2 ]] || die "usage: $0 check-freeze FREEZE [CONSTRAINTS]"
                check_freeze "$2" "${3:-$constraints}" ;;
  -h|--help|help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' ;;
  *) die "unknown command ${1} (build|manifest|archive-dir|names|pause-image|env|check-freeze)" ;;
esac
