#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs every check and test.
#
#   hack/test.sh                 # everything (what CI runs: .ci/run calls exactly this)
#   hack/test.sh tests/service   # pytest arguments narrow the run; the checks always run
#   hack/test.sh -n 0            # serially (by default the tests run on two pytest-xdist workers)
#   hack/test.sh --quick         # lint, types and the tests that need no server: installs .venv and tests/node
#
# Installs (only what is missing): PostgreSQL, Redis and promtool from Debian packages, the
# pinned Python dependencies into .venv, the Node.js test clients into tests/node, and the
# Kubernetes control-plane binaries and the S3-compatible test server built from source (cached
# outside the repo, keyed by version: only the first run on a machine pays, and it builds them in
# the background while it installs the rest). Test servers run on private ports and temporary
# directories (per xdist worker) and are stopped when the run ends.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
started=$SECONDS
step() { printf '\n=== %s (%ss)\n' "$*" "$((SECONDS - started))"; }

quick=false
if [[ ${1:-} == --quick ]]; then
  quick=true
  shift
fi

python_dependencies() {
  step "python dependencies (.venv, pinned by constraints.txt)"
  # A stamp of what was installed: a second run with the same pins installs nothing.
  local stamp
  stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
  if [[ -x .venv/bin/python && -f "${stamp}" ]]; then
    echo "up to date (${stamp})"
    return
  fi
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
  rm -f .venv/.installed-*
  touch "${stamp}"
}

node_clients() {
  step "node test clients (tests/node)"
  # The official Socket.IO clients, and the AsyncAPI parser a unit test validates the contract with.
  (cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
}

static_checks() {
  step "static checks"
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  .venv/bin/mypy
  .venv/bin/lint-imports
  hack/gen-protos.sh --check
  hack/buf.sh check  # buf lint, and buf breaking against the previous commit (installs buf once)
  # The TypeScript declarations of the socket events are generated from the payload models.
  .venv/bin/python -m messaging.contract --check
  # The chart values' schema descriptions and docs/messagingcluster.md's field reference.
  .venv/bin/python hack/gen-reference.py --check
}

if $quick; then
  python_dependencies
  node_clients
  static_checks
  step "tests that need no server (unit tests, pure operator logic)"
  # Tests that need a control plane are marked k8s at collection (tests/support/k8s.py); the
  # operator's pure modules (spec, builders, scaling, status) are tested without one.
  .venv/bin/pytest tests/unit tests/operator -m "not k8s" "$@"
  step "done"
  exit 0
fi

# The Go-built test servers (the Kubernetes control plane, versitygw for S3) are the long part of a
# cold run (~14 min on 2 cores, then cached): they build in the background, beside the installs
# and the static checks, and the tests wait for them. Each runs in a session of its own, so a
# run that fails early stops them (a half-done build is never marked complete).
builds="$(mktemp -d)"
build_pids=()
stop_builds() {
  local pid
  for pid in "${build_pids[@]}"; do kill -- "-${pid}" 2>/dev/null || true; done
  rm -rf "${builds}"
}
trap stop_builds EXIT
start_build() {
  setsid "hack/$1.sh" >"${builds}/$1.log" 2>&1 &
  build_pids+=($!)
}
wait_build() {
  local name=$1 pid=$2
  step "waiting for hack/${name}.sh"
  if ! wait "${pid}"; then
    cat "${builds}/${name}.log"
    echo "hack/${name}.sh failed" >&2
    exit 1
  fi
  tail -n 3 "${builds}/${name}.log"
}
step "building the Kubernetes control plane and the S3 server in the background (cached by version)"
start_build k8s-tools
start_build s3-server

step "system packages"
missing=()
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v node >/dev/null || missing+=(nodejs npm)
# The demo web client is tested in a real headless Chromium (driven by Playwright for Python).
command -v chromium >/dev/null || missing+=(chromium)
if ((${#missing[@]})); then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  # Keep the packages' own services from starting: the tests start private instances.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  trap 'stop_builds; $sudo rm -f /usr/sbin/policy-rc.d' EXIT
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

python_dependencies

node_clients

static_checks

wait_build k8s-tools "${build_pids[0]}"
wait_build s3-server "${build_pids[1]}"
build_pids=()

step "tests"
# Two pytest-xdist workers unless the arguments choose (-n 0: serially): the tests mostly wait on
# servers, so the second core halves the run (what keeps a cold CI run under its 40 minutes).
workers=(-n 2)
for arg in "$@"; do
  [[ $arg == -n* || $arg == --numprocesses* ]] && workers=()
done
.venv/bin/pytest "${workers[@]}" "$@"
step "done"
