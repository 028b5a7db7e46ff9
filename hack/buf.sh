#!/usr/bin/env bash
# Runs buf (https://buf.build) for `buf lint` and `buf breaking` on protos/. buf publishes its
# release binaries on the npm registry (@bufbuild/buf, with a package per platform), which this
# machine reaches: installed once, pinned, into a cache outside the repo keyed by its version
# (like hack/k8s-tools.sh), it takes seconds; building it from its Go module took 20 minutes.
#
# Usage:
#   hack/buf.sh check            `buf lint` on protos/, and `buf breaking` against the protos of
#                                the previous commit (HEAD~1); what hack/test.sh runs
#   hack/buf.sh ARGS...          run buf with ARGS (installed first if needed), e.g. hack/buf.sh lint protos
#   hack/buf.sh --print-bin      print the path of the binary without installing it
#
# Environment:
#   MESSAGING_BUF_DIR        cache root (default: $HOME/.cache/messaging-platform/buf)
set -euo pipefail

# Bump when the way buf is installed changes, so an old cache is not reused.
readonly SCRIPT_VERSION=2
readonly BUF_VERSION=1.75.0
readonly KEY="buf-${BUF_VERSION}_s${SCRIPT_VERSION}"
readonly ROOT="${MESSAGING_BUF_DIR:-${HOME}/.cache/messaging-platform/buf}"
readonly DEST="${ROOT}/${KEY}"
readonly BIN="${DEST}/node_modules/.bin/buf"

log() { printf 'buf.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == "--print-bin" ]]; then
  printf '%s\n' "${BIN}"
  exit 0
fi

if [[ ! -x "${BIN}" || ! -f "${DEST}/.complete" ]]; then
  command -v npm >/dev/null || die "npm is not on PATH; buf comes from the npm registry"
  mkdir -p "${ROOT}"
  # Two runs starting together must not install twice into the same place.
  exec 9>"${ROOT}/.${KEY}.lock"
  flock 9
  if [[ ! -x "${BIN}" || ! -f "${DEST}/.complete" ]]; then
    work="$(mktemp -d "${ROOT}/.install-XXXXXX")"
    trap 'rm -rf "${work}"' EXIT
    log "installing buf ${BUF_VERSION} from the npm registry (once; cached in ${DEST})"
    printf '{"private": true}\n' >"${work}/package.json"
    npm install --prefix "${work}" --no-audit --no-fund --loglevel=error --save-exact \
      "@bufbuild/buf@${BUF_VERSION}" >&2
    version="$("${work}/node_modules/.bin/buf" --version)"
    [[ "${version}" == "${BUF_VERSION}" ]] || die "installed buf says ${version}, expected ${BUF_VERSION}"
    touch "${work}/.complete"
    rm -rf "${DEST}"
    mv "${work}" "${DEST}"
    log "installed buf ${version}"
  fi
  exec 9>&-
fi

if [[ "${1:-}" != "check" ]]; then
  exec "${BIN}" "$@"
fi

# --- check: lint, and breaking changes against the previous commit ------------------------------
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "${root}"
"${BIN}" lint protos
log "buf lint: clean"

# The previous commit's protos/, taken with `git archive` (it works the same in a worktree and in
# a clone, and needs nothing but the commit). CI checks out one commit deep: fetch one more.
if ! git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null; then
  if [[ "$(git rev-parse --is-shallow-repository)" == true ]]; then
    git fetch -q --deepen=1 2>/dev/null || true
  fi
fi
if ! git rev-parse --verify -q 'HEAD~1^{commit}' >/dev/null; then
  log "buf breaking: skipped (HEAD has no parent commit here to compare with)"
  exit 0
fi
against="$(mktemp -d)"
trap 'rm -rf "${against}"' EXIT
if ! git archive HEAD~1 protos 2>/dev/null | tar -x -C "${against}"; then
  log "buf breaking: skipped (the previous commit has no protos/)"
  exit 0
fi
# Before protos/buf.yaml existed, the directory was still one module with buf's defaults.
[[ -f "${against}/protos/buf.yaml" ]] || printf 'version: v2\n' >"${against}/protos/buf.yaml"
"${BIN}" breaking protos --against "${against}/protos"
log "buf breaking: no breaking change against $(git rev-parse --short HEAD~1)"
