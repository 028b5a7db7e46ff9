#!/usr/bin/env bash
# Builds the Kubernetes control plane the tests run against (tests/support/k8s.py), from Go
# modules, because this machine has no Docker engine and no download site but the package
# registries: kube-apiserver, kube-controller-manager, kube-scheduler and kubectl of one pinned
# Kubernetes release, etcd 3.5, kwok (simulated nodes) and helm 3.
#
# The binaries are cached outside the repo, in a directory keyed by every pinned version, so only
# the first run on a machine pays for the build; later runs return at once. The caching (a lock
# per key, a scratch build moved into place once verified) is hack/lib/cached-go-build.sh, shared
# with hack/s3-server.sh.
#
# Usage:
#   hack/k8s-tools.sh                  build if needed; the last line of stdout is the bin dir
#   hack/k8s-tools.sh --print-bin-dir  print the bin dir without building (it may not exist yet)
#   hack/k8s-tools.sh --rebuild        build again even if the cache is complete
#
# Environment:
#   MESSAGING_K8S_TOOLS_DIR  cache root (default: $HOME/.cache/messaging-platform/k8s-tools)
#   GOMODCACHE, GOCACHE      honoured as usual (the build needs ~0.6 GiB and ~4 GiB there)
#
# Why it builds the way it does:
# - `go install` refuses k8s.io/kubernetes because its go.mod carries `replace` directives that
#   point the k8s.io/* staging modules at its own tree. So a small module is generated in a
#   scratch directory that requires the release and maps each staging module to its published
#   v0.X.Y twin, the list being read from the release's own go.mod.
# - Without -X ldflags the servers report v0.0.0; the stamps are those of upstream's
#   hack/lib/version.sh. CGO_ENABLED=0 as upstream builds them.
# - The four Kubernetes binaries come from ONE `go build` so their shared packages compile once;
#   kwok and helm share another (see prepare_kwok_helm). The Kubernetes build and the etcd, then
#   kwok+helm builds run side by side: each is mostly one long compile, and the overlap fills
#   the idle time of downloads and single-threaded links.
set -euo pipefail
# shellcheck source=hack/lib/cached-go-build.sh
source "$(dirname "$0")/lib/cached-go-build.sh"

# Bump when the way the tools are built changes, so old caches are not reused.
readonly SCRIPT_VERSION=2
readonly K8S_VERSION=v1.34.12
readonly ETCD_VERSION=v3.5.35
readonly KWOK_VERSION=v0.8.0
readonly HELM_VERSION=v3.22.0

readonly K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
readonly ALL_BINARIES=("${K8S_BINARIES[@]}" etcd kwok helm)

TOOL=k8s-tools
KEY="k8s-${K8S_VERSION#v}_etcd-${ETCD_VERSION#v}_kwok-${KWOK_VERSION#v}_helm-${HELM_VERSION#v}_s${SCRIPT_VERSION}"
ROOT="${MESSAGING_K8S_TOOLS_DIR:-${HOME}/.cache/messaging-platform/k8s-tools}"
RESULT="${ROOT}/${KEY}/bin"
PRINT_FLAG=--print-bin-dir

is_complete() {
  local name
  for name in "${ALL_BINARIES[@]}"; do
    [[ -x "${DEST}/bin/${name}" ]] || return 1
  done
  [[ -f "${DEST}/share/kwok/stages.yaml" ]]
}

# Prints one path field (GoMod, Dir, Info) of `go mod download -json MODULE@VERSION`; exits
# non-zero when the module cannot be had or the path does not exist.
module_field() {
  local json value
  json="$(cd "${WORK}" && go mod download -json "$1")" || { log "cannot download $1: ${json}"; return 1; }
  value="$(sed -n "s/^[[:space:]]*\"$2\": \"\(.*\)\",\{0,1\}\$/\1/p" <<<"${json}")"
  [[ -e "${value}" ]] || { log "go mod download $1 gave no $2"; return 1; }
  printf '%s' "${value}"
}

# Prints the `go` directive of a go.mod file.
go_directive() { sed -n 's/^go \([0-9.]*\)$/\1/p' "$1"; }

# Writes WORK/src/NAME/go.mod with GO as its go directive, REQUIRES ("module version" lines)
# as its requirements and the remaining arguments as extra lines (replace blocks, godebug).
write_module() {
  local name=$1 go_version=$2 requires=$3
  shift 3
  mkdir -p "${WORK}/src/${name}"
  {
    printf 'module k8s-tools.local/%s\n\ngo %s\n\n' "${name}" "${go_version}"
    printf '%s\n' "$@"
    printf '\nrequire (\n'
    local line
    while IFS= read -r line; do printf '\t%s\n' "${line}"; done <<<"${requires}"
    printf ')\n'
  } >"${WORK}/src/${name}/go.mod"
}

k8s_ldflags() {
  local release_time=$1 minor
  minor="$(cut -d. -f2 <<<"${K8S_VERSION}")"
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    flags+=" -X ${pkg}.gitMajor=1 -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${release_time}"
  done
  printf '%s' "${flags}"
}

prepare_kubernetes() {
  local gomod info release_time staging_version
  gomod="$(module_field "k8s.io/kubernetes@${K8S_VERSION}" GoMod)"
  info="$(module_field "k8s.io/kubernetes@${K8S_VERSION}" Info)"
  [[ -f "${gomod}" && -f "${info}" ]] || die "no go.mod for k8s.io/kubernetes@${K8S_VERSION}"
  release_time="$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${info}")"
  staging_version="v0.${K8S_VERSION#v1.}"
  # Each `k8s.io/x => ./staging/src/k8s.io/x` of the release becomes `k8s.io/x => k8s.io/x v0.Y.Z`.
  local replaces
  replaces="$(awk -v v="${staging_version}" '
    /^replace \(/ { inside = 1; next }
    inside && /^\)/ { inside = 0 }
    inside && $2 == "=>" && $3 ~ /^\.\/staging\// { printf "\t%s => %s %s\n", $1, $1, v }
  ' "${gomod}")"
  [[ -n "${replaces}" ]] || die "found no staging replace directives in ${gomod}"
  write_module kubernetes "$(go_directive "${gomod}")" "k8s.io/kubernetes ${K8S_VERSION}" \
    "$(grep '^godebug' "${gomod}" || true)" "" "replace (" "${replaces}" ")"
  printf '%s' "${release_time}" >"${WORK}/src/kubernetes/release-time"
}

build_kubernetes() {
  local pkgs=() name
  for name in "${K8S_BINARIES[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/${name}"); done
  (cd "${WORK}/src/kubernetes" &&
    go build -mod=mod -trimpath \
      -ldflags "$(k8s_ldflags "$(cat release-time)")" -o "${OUT}/bin/" "${pkgs[@]}")
}

prepare_etcd() {
  local gomod
  gomod="$(module_field "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" GoMod)"
  # The server module pins the exact api/client/pkg/raft versions of its release, so nothing
  # needs replacing here; its root package is the etcd main.
  write_module etcd "$(go_directive "${gomod}")" "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"
}

build_etcd() {
  (cd "${WORK}/src/etcd" &&
    go build -mod=mod -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-${ETCD_VERSION}" \
      -o "${OUT}/bin/etcd" go.etcd.io/etcd/server/v3)
}

# kwok and helm share one module and one `go build`. Neither needs `replace`, and both are
# clients built on k8s.io/client-go (kwok's of v0.36, helm's of v0.37 for the pins above), so
# building them together compiles client-go, the API types and their dependencies once instead
# of twice: measured cold, 189 CPU-seconds together against 312 apart, a minute of wall time on
# two cores. The price is that kwok links the newer of the two client-go releases (minimal
# version selection), which the harness tests exercise. Should a future pin stop compiling
# together, give each its own module again.
prepare_kwok_helm() {
  local kwok_mod helm_mod go_version
  kwok_mod="$(module_field "sigs.k8s.io/kwok@${KWOK_VERSION}" GoMod)"
  helm_mod="$(module_field "helm.sh/helm/v3@${HELM_VERSION}" GoMod)"
  go_version="$(printf '%s\n' "$(go_directive "${kwok_mod}")" "$(go_directive "${helm_mod}")" |
    sort -V | tail -n 1)"
  write_module kwok-helm "${go_version}" \
    "$(printf 'sigs.k8s.io/kwok %s\nhelm.sh/helm/v3 %s' "${KWOK_VERSION}" "${HELM_VERSION}")"
  # Helm's Makefile stamps the Kubernetes minor of its client-go as the default kube version.
  sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "${helm_mod}" \
    >"${WORK}/src/kwok-helm/helm-k8s-minor"
  [[ -s "${WORK}/src/kwok-helm/helm-k8s-minor" ]] || die "no k8s.io/client-go in ${helm_mod}"
}

build_kwok_helm() {
  local minor flags
  minor="$(cat "${WORK}/src/kwok-helm/helm-k8s-minor")"
  # helm's stamps, as its Makefile sets them; kwok carries its version in its source.
  flags="-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1"
  flags+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${minor}"
  flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1"
  flags+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}"
  (cd "${WORK}/src/kwok-helm" &&
    go build -mod=mod -trimpath -ldflags "${flags}" -o "${OUT}/bin/" \
      sigs.k8s.io/kwok/cmd/kwok helm.sh/helm/v3/cmd/helm)

  # kwok only moves nodes and pods through their lives when given Stage objects; these are the
  # defaults kwokctl feeds it, taken from the same release so they match the binary.
  local dir stage
  dir="$(module_field "sigs.k8s.io/kwok@${KWOK_VERSION}" Dir)"
  for stage in node/fast/node-initialize.yaml \
    node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
    pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    [[ -f "${dir}/kustomize/stage/${stage}" ]] || die "kwok ${KWOK_VERSION} has no stage ${stage}"
    printf -- '---\n' >>"${OUT}/share/kwok/stages.yaml"
    cat "${dir}/kustomize/stage/${stage}" >>"${OUT}/share/kwok/stages.yaml"
  done
}

# Runs the named build steps one after the other, logging to WORK/logs/GROUP.log.
run_group() {
  local group=$1 step t rc
  shift
  for step in "$@"; do
    t=${SECONDS}
    log "${group}: ${step} ..."
    # A subshell outside any `||`, so that `set -e` holds inside the step.
    set +e
    (set -e; "${step}") >>"${WORK}/logs/${group}.log" 2>&1
    rc=$?
    set -e
    if [[ "${rc}" != 0 ]]; then
      log "${group}: ${step} FAILED; last lines of its log:"
      tail -n 40 "${WORK}/logs/${group}.log" >&2
      return 1
    fi
    log "${group}: ${step} done in $((SECONDS - t))s"
  done
}

build() {
  mkdir -p "${OUT}/share/kwok" "${WORK}/logs"
  log "GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"
  prepare_kubernetes
  prepare_etcd
  prepare_kwok_helm

  run_group kubernetes build_kubernetes &
  local k8s_pid=$! others_pid failed=0
  run_group others build_etcd build_kwok_helm &
  others_pid=$!
  wait "${k8s_pid}" || failed=1
  wait "${others_pid}" || failed=1
  [[ "${failed}" == 0 ]] || die "the build failed (see the log lines above)"
}

verify() {
  expect kube-apiserver "Kubernetes ${K8S_VERSION}" --version
  expect kube-controller-manager "Kubernetes ${K8S_VERSION}" --version
  expect kube-scheduler "Kubernetes ${K8S_VERSION}" --version
  expect kubectl "Client Version: ${K8S_VERSION}" version --client
  expect etcd "etcd Version: ${ETCD_VERSION#v}" --version
  expect kwok "${KWOK_VERSION#v}" --version
  expect helm "${HELM_VERSION}" version --short
}

build_info() {
  printf 'kubernetes %s\netcd %s\nkwok %s\nhelm %s\nscript %s\n' \
    "${K8S_VERSION}" "${ETCD_VERSION}" "${KWOK_VERSION}" "${HELM_VERSION}" "${SCRIPT_VERSION}"
}

cached_go_build "$@"
