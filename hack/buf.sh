#!/usr/bin/env bash
# Runs buf (https://buf.build), built from its Go module at a pinned version, for `buf lint` and
# `buf breaking` on protos/. This machine has no download site but the package registries, so buf
# is built with `go install` from the Go module proxy, once, into a cache outside the repo keyed
# by its version (like hack/k8s-tools.sh); later runs start it at once.
#
# Usage:
#   hack/buf.sh check            `buf lint` on protos/, and `buf breaking` against the protos of
#                                the previous commit (HEAD~1); what hack/test.sh runs
#   hack/buf.sh ARGS...          run buf with ARGS (built first if needed), e.g. hack/buf.sh lint protos
#   hack/buf.sh --print-bin      print the path of the binary without building it
#
# Environment:
#   MESSAGING_BUF_DIR        cache root (default: $HOME/.cache/messaging-platform/buf)
#   GOMODCACHE, GOCACHE      honoured as usual
set -euo pipefail

# Bump when the way buf is built changes, so an old cache is not reused.
readonly SCRIPT_VERSION=1
readonly BUF_VERSION=v1.75.0
readonly KEY="buf-${BUF_VERSION#v}_s${SCRIPT_VERSION}"
readonly ROOT="${MESSAGING_BUF_DIR:-${HOME}/.cache/messaging-platform/buf}"
readonly DEST="${ROOT}/${KEY}"
readonly BIN="${DEST}/bin/buf"

log() { printf 'buf.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == "--print-bin" ]]; then
  printf '%s\n' "${BIN}"
  exit 0
fi

if [[ ! -x "${BIN}" || ! -f "${DEST}/.complete" ]]; then
  command -v go >/dev/null || die "go is not on PATH; buf is built from its Go module"
  mkdir -p "${ROOT}"
  # Two runs starting together must not build twice into the same place.
  exec 9>"${ROOT}/.${KEY}.lock"
  flock 9
  if [[ ! -x "${BIN}" || ! -f "${DEST}/.complete" ]]; then
    started=${SECONDS}
    work="$(mktemp -d "${ROOT}/.build-XXXXXX")"
    trap 'rm -rf "${work}"' EXIT
    log "building buf ${BUF_VERSION} with $(go env GOVERSION) (once; cached in ${DEST})"
    mkdir -p "${work}/out/bin"
    # GOTOOLCHAIN=auto: buf's go.mod may ask for a newer Go, which comes through the proxy too.
    (cd "${work}" && CGO_ENABLED=0 GOWORK=off GOFLAGS=-buildvcs=false \
      GOTOOLCHAIN="${GOTOOLCHAIN_OVERRIDE:-auto}" GOBIN="${work}/out/bin" \
      go install -trimpath -ldflags "-s -w" "github.com/bufbuild/buf/cmd/buf@${BUF_VERSION}") >&2
    version="$("${work}/out/bin/buf" --version)"
    [[ "${version}" == "${BUF_VERSION#v}" ]] || die "built buf says ${version}, expected ${BUF_VERSION#v}"
    touch "${work}/out/.complete"
    rm -rf "${DEST}"
    mv "${work}/out" "${DEST}"
    log "built buf ${version} in $((SECONDS - started))s"
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
