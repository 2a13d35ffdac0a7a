#!/usr/bin/env bash
# Builds the local control plane from Go module sources into a versioned cache
# outside the clone:
#   ${KUBEINFER_CACHE:-~/.cache/kubeinfer}/controlplane/<tag>/bin/
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, helm
# (with `adapter`, prometheus-adapter; with `node`, the real node's kubelet, kube-proxy
# and containerd). Versions come from hack/versions.env only.
#
# Usage: hack/build-controlplane.sh [core|adapter|node|tag|bin-dir]
#   core     (default) the control plane, kwok and helm
#   adapter  prometheus-adapter, into the same bin dir
#   node     kubelet and kube-proxy (same Kubernetes source as the control plane),
#            containerd, its runc shim, ctr and crictl, into the same bin dir
#   tag      print the cache tag;  bin-dir  print the bin dir
#
# A warm cache (binaries present + stamp file matching the versions) returns at once.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

tag="k8s-${KUBE_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
root="${KUBEINFER_CACHE:-${HOME}/.cache/kubeinfer}/controlplane/${tag}"
bin="${root}/bin"
src="${root}/src"
core_bins=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm)

log() { printf '[cluster-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# 2 cores: one compile at a time per package graph level, bounded RAM.
export GOMAXPROCS="${GOMAXPROCS:-$(nproc)}"
export GOFLAGS="-mod=mod -buildvcs=false -p=${GOMAXPROCS}"
export CGO_ENABLED=0
export GOTOOLCHAIN=local
export GOPROXY="${GOPROXY:-https://proxy.golang.org}"

stamp_core="${root}/.stamp-core"
stamp_adapter="${root}/.stamp-adapter-${PROMETHEUS_ADAPTER_VERSION}"
stamp_node="${root}/.stamp-node-${CONTAINERD_VERSION}-${CRICTL_VERSION}"
node_bins=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr crictl)
# SeaweedFS has a build of its own (build-seaweedfs.sh): its version does not stale these binaries.
stamp_text="$(grep -v -e '^#' -e '^$' -e '^SEAWEEDFS_VERSION=' "${here}/versions.env"; go env GOVERSION)"

have() {  # have <bins...>: every one is built
  local b; for b in "$@"; do [[ -x "${bin}/${b}" ]] || return 1; done
}

warm() {  # warm <stamp> <bins...>
  local stamp="$1"; shift
  [[ -f "${stamp}" && "$(cat "${stamp}")" == "${stamp_text}" ]] && have "$@"
}

begin() {  # begin <stamp> <what> <bins...>: exit at once when warm, else make ready to build
  local stamp="$1" what="$2"; shift 2
  if warm "$stamp" "$@"; then
    log "warm cache: ${bin} (${what}: nothing to build)"; exit 0
  fi
  need_go; mkdir -p "$bin" "$src"
}

finish() {  # finish <stamp> <bins...>: check every binary is there, then write the stamp
  local stamp="$1"; shift
  have "$@" || die "one of $* is missing in ${bin} after the build"
  printf '%s\n' "$stamp_text" > "$stamp"
}

need_go() {
  command -v go >/dev/null || die "go not found on PATH (Go >= 1.26 is required)"
}

new_module() {  # new_module <dir> <module path>: an empty tools module in the cache
  rm -rf "$1"; mkdir -p "$1"
  (cd "$1" && go mod init "$2" >/dev/null 2>&1 && go mod edit -go=1.26.0)
}

build_etcd() {
  log "etcd ${ETCD_VERSION}: resolving go.etcd.io/etcd/server/v3 (own module: its go.mod has replaces)"
  local d="${src}/etcd"
  new_module "$d" kubeinfer.local/tools/etcd
  (cd "$d" \
    && go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" \
    && log "etcd: compiling" \
    && go build -trimpath -ldflags "-s -w" -o "${bin}/etcd" go.etcd.io/etcd/server/v3)
}

kube_module() {  # kube_module <dir>: the wrapper module requiring k8s.io/kubernetes with staging replaces
  local kv="${KUBE_VERSION}" staging_v="v0.${KUBE_VERSION#v1.}" d="$1"
  log "kubernetes ${kv}: wrapper module with staging replaces -> ${staging_v}"
  new_module "$d" kubeinfer.local/tools/kubernetes
  local gomod
  gomod="$(cd "$d" && go mod download -json "k8s.io/kubernetes@${kv}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  local names
  names="$(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\) => \./staging/src/k8s\.io/.*#\1#p' "$gomod" | sort -u)"
  [[ -n "$names" ]] || die "no staging replaces found in ${gomod}"
  log "kubernetes: $(wc -w <<<"$names") staging modules"
  local args=() n
  for n in $names; do args+=("-replace=${n}=${n}@${staging_v}"); done
  (cd "$d" && go mod edit "${args[@]}" -require="k8s.io/kubernetes@${kv}")
}

kube_ldflags() {
  # Version stamping as kubernetes' hack/lib/version.sh does, so /version says the version
  # (helm's kubeVersion constraints read it).
  local kv="${KUBE_VERSION}" major minor
  major="${kv#v}"; major="${major%%.*}"
  minor="${kv#v*.}"; minor="${minor%%.*}"
  local ld="-s -w" pkg key val kvp
  local date; date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    for kvp in "gitVersion=${kv}" "gitMajor=${major}" "gitMinor=${minor}" \
               "gitTreeState=clean" "gitCommit=kubeinfer-module-build" "buildDate=${date}"; do
      key="${kvp%%=*}"; val="${kvp#*=}"
      ld+=" -X '${pkg}.${key}=${val}'"
    done
  done
  printf '%s' "$ld"
}

build_kube() {
  local kv="${KUBE_VERSION}" d="${src}/kubernetes"
  kube_module "$d"
  log "kubernetes: downloading modules (about 1 GB on a cold module cache)"
  (cd "$d" && go get -tool \
      "k8s.io/kubernetes/cmd/kube-apiserver@${kv}" \
      "k8s.io/kubernetes/cmd/kube-controller-manager@${kv}" \
      "k8s.io/kubernetes/cmd/kube-scheduler@${kv}" \
      "k8s.io/kubernetes/cmd/kubectl@${kv}")
  local ld; ld="$(kube_ldflags)"
  log "kubernetes: compiling kube-apiserver, kube-controller-manager, kube-scheduler, kubectl (the long part)"
  (cd "$d" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags "${ld}" -o "${bin}/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
}

build_kwok() {
  log "kwok ${KWOK_VERSION}: go install"
  GOBIN="${bin}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
  # The stage files ship in the module (kustomize/stage); kwok needs them at run time.
  local mod; mod="$(cd "${src}" && go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "${root}/kwok-stage"; cp -r "${mod}/kustomize/stage" "${root}/kwok-stage"
  chmod -R u+w "${root}/kwok-stage"
}

build_helm() {
  local major="${HELM_VERSION#v}"; major="${major%%.*}"
  log "helm ${HELM_VERSION}: go install"
  GOBIN="${bin}" go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v${major}/internal/version.version=${HELM_VERSION}" \
      "helm.sh/helm/v${major}/cmd/helm@${HELM_VERSION}"
}

build_adapter() {
  # Not `go install ...@version`: the proxy answers 403 on this module's version list
  # (@v/list), which go install reads for deprecation notices, while the tagged version
  # itself is served. A tools module that requires the exact version never lists.
  log "prometheus-adapter ${PROMETHEUS_ADAPTER_VERSION}: tools module"
  local d="${src}/prometheus-adapter"
  new_module "$d" kubeinfer.local/tools/prometheus-adapter
  (cd "$d" \
    && go mod edit -require="sigs.k8s.io/prometheus-adapter@${PROMETHEUS_ADAPTER_VERSION}" \
    && log "prometheus-adapter: downloading modules and compiling" \
    && go build -trimpath -ldflags "-s -w" -o "${bin}/prometheus-adapter" \
         sigs.k8s.io/prometheus-adapter/cmd/adapter)
}

build_node_kube() {
  # Its own wrapper module (same version, same replaces) so the control plane's is left as built.
  local kv="${KUBE_VERSION}" d="${src}/kubernetes-node"
  kube_module "$d"
  log "kubelet, kube-proxy: resolving modules"
  (cd "$d" && go get -tool "k8s.io/kubernetes/cmd/kubelet@${kv}" "k8s.io/kubernetes/cmd/kube-proxy@${kv}")
  local ld; ld="$(kube_ldflags)"
  log "kubelet, kube-proxy: compiling (shares the control plane's build cache)"
  (cd "$d" && go build -trimpath -tags=selinux,notest,grpcnotrace -ldflags "${ld}" -o "${bin}/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}

build_containerd() {
  local d="${src}/containerd" m="github.com/containerd/containerd/v2"
  log "containerd ${CONTAINERD_VERSION}: tools module"
  new_module "$d" kubeinfer.local/tools/containerd
  (cd "$d" && go mod edit -require="${m}@${CONTAINERD_VERSION}" \
    && log "containerd: downloading modules and compiling containerd, containerd-shim-runc-v2, ctr" \
    && go build -trimpath -tags no_btrfs,no_devmapper,no_zfs \
         -ldflags "-s -w -X ${m}/version.Version=${CONTAINERD_VERSION}" -o "${bin}/" \
         "${m}/cmd/containerd" "${m}/cmd/containerd-shim-runc-v2" "${m}/cmd/ctr")
}

build_crictl() {
  # crictl talks CRI to containerd: the sweep of a killed node's pod sandboxes uses it.
  log "crictl ${CRICTL_VERSION}: go install"
  GOBIN="${bin}" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}"
}

timed() {  # timed <name> <fn>
  local t0=$SECONDS
  "$2"
  log "$1 done in $((SECONDS - t0))s"
}

cmd="${1:-core}"
case "$cmd" in
  tag) echo "$tag"; exit 0 ;;
  bin-dir) echo "$bin"; exit 0 ;;
  core)
    begin "$stamp_core" "control plane" "${core_bins[@]}"
    log "cold build into ${root} (GOMAXPROCS=${GOMAXPROCS}); expect 10-30 minutes on 2 cores"
    t_all=$SECONDS
    have etcd || timed etcd build_etcd
    have kube-apiserver kube-controller-manager kube-scheduler kubectl || timed kubernetes build_kube
    have kwok && [[ -d "${root}/kwok-stage" ]] || timed kwok build_kwok
    have helm || timed helm build_helm
    finish "$stamp_core" "${core_bins[@]}"
    log "control plane built in $((SECONDS - t_all))s: ${bin}"
    "${bin}/kube-apiserver" --version >&2 || true
    ;;
  adapter)
    begin "$stamp_adapter" prometheus-adapter prometheus-adapter
    timed prometheus-adapter build_adapter
    finish "$stamp_adapter" prometheus-adapter
    ;;
  node)
    begin "$stamp_node" "kubelet, kube-proxy, containerd" "${node_bins[@]}"
    log "cold build of the real node into ${bin}; expect 5-15 minutes on 2 cores"
    t_all=$SECONDS
    have kubelet kube-proxy || timed kubelet+kube-proxy build_node_kube
    have containerd containerd-shim-runc-v2 ctr || timed containerd build_containerd
    have crictl || timed crictl build_crictl
    finish "$stamp_node" "${node_bins[@]}"
    log "real node built in $((SECONDS - t_all))s"
    ;;
  *) die "unknown command: $cmd (core|adapter|node|tag|bin-dir)" ;;
esac
