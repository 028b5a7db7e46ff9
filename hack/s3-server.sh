#!/usr/bin/env bash
# Builds the S3-compatible object store the attachment tests run against (tests/support/servers.py
# starts it): versitygw, the Versity S3 gateway, with its POSIX backend, from Go modules, because
# this machine has no Docker engine and no download site but the package registries.
#
# Why versitygw (measured on this machine, 2 cores, see docs/attachments.md): its module needs no
# `replace` directives, so a plain `go install MODULE@VERSION` builds it; its go.mod has ~90
# requirements against ~510 for SeaweedFS, so a cold build is minutes, not a quarter hour; it
# checks SigV4 on every request, presigned query-string URLs included (so a tampered or expired
# URL is refused by the real thing), serves path-style addressing, and stores objects as plain
# files in a directory, so a test server is one process in a temp dir.
#
# The binary is cached outside the repo, in a directory keyed by the pinned version, so only the
# first run on a machine pays for the build; later runs return at once.
#
# Usage:
#   hack/s3-server.sh                  build if needed; the last line of stdout is the binary
#   hack/s3-server.sh --print-binary   print the binary's path without building (may not exist)
#   hack/s3-server.sh --rebuild        build again even if the cache is complete
#
# Environment:
#   MESSAGING_S3_SERVER_DIR  cache root (default: $HOME/.cache/messaging-platform/s3-server)
#   GOMODCACHE, GOCACHE      honoured as usual
set -euo pipefail

# Bump when the way the server is built changes, so old caches are not reused.
readonly SCRIPT_VERSION=1
readonly VERSITYGW_VERSION=v1.8.0
readonly MODULE=github.com/versity/versitygw

readonly KEY="versitygw-${VERSITYGW_VERSION#v}_s${SCRIPT_VERSION}"
readonly ROOT="${MESSAGING_S3_SERVER_DIR:-${HOME}/.cache/messaging-platform/s3-server}"
readonly DEST="${ROOT}/${KEY}"
readonly BINARY="${DEST}/bin/versitygw"
readonly STAMP="${DEST}/.complete"

log() { printf 's3-server: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_complete() { [[ -f "${STAMP}" && -x "${BINARY}" ]]; }

rebuild=0
case "${1:-}" in
  "") ;;
  --print-binary) printf '%s\n' "${BINARY}"; exit 0 ;;
  --rebuild) rebuild=1 ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

if [[ "${rebuild}" == 0 ]] && is_complete; then
  printf '%s\n' "${BINARY}"
  exit 0
fi

command -v go >/dev/null || die "go is not on PATH; the server is built from Go modules"
mkdir -p "${ROOT}"

# Two test runs starting together must not build twice into the same place.
exec 9>"${ROOT}/.${KEY}.lock"
if ! flock -n 9; then
  log "another build of ${KEY} is running; waiting for it"
  flock 9
fi
if [[ "${rebuild}" == 0 ]] && is_complete; then
  printf '%s\n' "${BINARY}"
  exit 0
fi

started=${SECONDS}
WORK="$(mktemp -d "${ROOT}/.build-XXXXXX")"
readonly WORK
on_exit() {
  local rc=$?
  rm -rf "${WORK}"
  if [[ "${rc}" != 0 ]]; then
    log "FAILED (exit ${rc}) after $((SECONDS - started))s; nothing was cached"
  fi
}
trap on_exit EXIT
OUT="${WORK}/out"
mkdir -p "${OUT}/bin"

# The module proxy is the only way out; a newer Go, if the module asks for one, comes through it.
export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN_OVERRIDE:-auto}" GOFLAGS=-buildvcs=false
log "building ${KEY} with $(go env GOVERSION) into ${DEST}"
# The version stamp is what upstream's Makefile sets (main.Version); -s -w as its release builds.
GOBIN="${OUT}/bin" go install -trimpath \
  -ldflags "-s -w -X main.Version=${VERSITYGW_VERSION} -X main.Build=module" \
  "${MODULE}/cmd/versitygw@${VERSITYGW_VERSION}"

# Prove it runs and carries the pinned version before the cache is marked complete.
output="$("${OUT}/bin/versitygw" --version 2>&1)" || die "versitygw --version failed: ${output}"
grep -qF -- "${VERSITYGW_VERSION}" <<<"${output}" ||
  die "versitygw --version printed '${output}', expected '${VERSITYGW_VERSION}'"

{
  printf 'versitygw %s\nscript %s\n' "${VERSITYGW_VERSION}" "${SCRIPT_VERSION}"
  printf 'go %s\nbuilt %s in %ss\n' "$(go env GOVERSION)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - started))"
} >"${OUT}/BUILD-INFO"
touch "${OUT}/.complete"

rm -rf "${DEST}"
mv "${OUT}" "${DEST}"
log "built ${KEY} in $((SECONDS - started))s ($(du -sh "${BINARY}" | cut -f1))"
printf '%s\n' "${BINARY}"
