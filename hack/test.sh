#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs every check and test.
#
#   hack/test.sh                 # everything (what CI runs: .ci/run calls exactly this)
#   hack/test.sh tests/service   # pytest arguments narrow the run; the checks always run
#   hack/test.sh --quick         # lint, types and the tests that need no server: installs only .venv
#
# Installs (only what is missing): PostgreSQL, Redis and promtool from Debian packages, the
# pinned Python dependencies into .venv, the Node.js test clients into tests/node, and the
# Kubernetes control-plane binaries and the S3-compatible test server built from source (cached
# outside the repo, keyed by version: only the first run on a machine pays). Test servers run on private ports and
# temporary directories and are stopped when the run ends.
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
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[dev,bench]'
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
  static_checks
  step "tests that need no server (unit tests, pure operator logic)"
  # Tests that need a control plane are marked k8s at collection (tests/support/k8s.py); the
  # operator's pure modules (spec, builders, scaling, status) are tested without one.
  .venv/bin/pytest tests/unit tests/operator -m "not k8s" "$@"
  step "done"
  exit 0
fi

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
  trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  $sudo rm -f /usr/sbin/policy-rc.d
fi

python_dependencies

step "node test clients (tests/node)"
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)

step "kubernetes control plane binaries"
hack/k8s-tools.sh

step "S3-compatible object store for the attachment tests (versitygw, built from Go modules)"
hack/s3-server.sh

static_checks

step "tests"
.venv/bin/pytest "$@"
step "done"
