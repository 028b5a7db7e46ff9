# The one story of hack/s3-server.sh and hack/k8s-tools.sh: build Go modules at pinned versions
# into a cache outside the repo, in a directory keyed by every pinned version, atomically, and do
# nothing when that directory is already complete. Sourced, not run.
#
# The caller sets, before calling `cached_go_build "$@"`:
#   TOOL         the log prefix, e.g. s3-server
#   KEY          the cache key (every pinned version and the script's own version)
#   ROOT         the cache root (DEST="${ROOT}/${KEY}" is the build's directory)
#   RESULT       the path printed as the last line of stdout (the binary, or the bin dir)
#   PRINT_FLAG   the flag that prints RESULT without building (e.g. --print-binary)
# and defines:
#   is_complete  true when "${DEST}" holds every file of a complete build
#   build        builds into "${OUT}" (scratch space in "${WORK}", logs to stderr); Go's
#                environment is set (CGO_ENABLED=0, GOWORK=off, GOTOOLCHAIN=auto, -buildvcs=false)
#   verify       checks the binaries in "${OUT}" run and carry the pinned versions (die if not)
#   build_info   prints the versions lines of BUILD-INFO
#
# What it guarantees: two runs starting together build once (a lock per key, the second waits
# and then finds the cache complete); a failed or interrupted build leaves nothing behind (it
# builds in a scratch directory and moves the result into place only once verified, stamped
# `.complete`); `--rebuild` builds again; `--help` prints the caller's header comment.

log() { printf '%s: %s\n' "${TOOL}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Prints the result when DEST is complete (and `--rebuild` was not given); returns non-zero if not.
_cached_go_build_done() {
  [[ "${rebuild}" == 0 && -f "${DEST}/.complete" ]] && is_complete || return 1
  printf '%s\n' "${RESULT}"
}

cached_go_build() {
  DEST="${ROOT}/${KEY}"
  rebuild=0
  case "${1:-}" in
    "") ;;
    "${PRINT_FLAG}") printf '%s\n' "${RESULT}"; exit 0 ;;
    --rebuild) rebuild=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac

  _cached_go_build_done && exit 0

  command -v go >/dev/null || die "go is not on PATH; ${TOOL} is built from Go modules"
  mkdir -p "${ROOT}"

  # Two test runs starting together must not build twice into the same place.
  exec 9>"${ROOT}/.${KEY}.lock"
  if ! flock -n 9; then
    log "another build of ${KEY} is running; waiting for it"
    flock 9
  fi
  _cached_go_build_done && exit 0

  started=${SECONDS}
  WORK="$(mktemp -d "${ROOT}/.build-XXXXXX")"
  OUT="${WORK}/out"
  trap _cached_go_build_exit EXIT
  mkdir -p "${OUT}/bin"

  # The module proxy is the only way out; a newer Go, if a go.mod asks for one, comes through it.
  export CGO_ENABLED=0 GOWORK=off GOTOOLCHAIN="${GOTOOLCHAIN_OVERRIDE:-auto}" GOFLAGS=-buildvcs=false
  log "building ${KEY} with $(go env GOVERSION) into ${DEST}"
  build
  # Prove the binaries run and carry the pinned versions before the cache is marked complete.
  verify
  {
    build_info
    printf 'go %s\nbuilt %s in %ss\n' "$(go env GOVERSION)" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$((SECONDS - started))"
  } >"${OUT}/BUILD-INFO"
  touch "${OUT}/.complete"

  rm -rf "${DEST}"
  mv "${OUT}" "${DEST}"
  log "built ${KEY} in $((SECONDS - started))s ($(du -sh "${DEST}/bin" | cut -f1) in ${DEST}/bin)"
  printf '%s\n' "${RESULT}"
}

_cached_go_build_exit() {
  local rc=$?
  rm -rf "${WORK}"
  if [[ "${rc}" != 0 ]]; then
    log "FAILED (exit ${rc}) after $((SECONDS - started))s; nothing was cached"
  fi
}

# `expect BINARY NEEDLE ARGS...`: runs OUT/bin/BINARY ARGS and dies unless its output holds NEEDLE.
expect() {
  local binary=$1 needle=$2 output
  shift 2
  output="$("${OUT}/bin/${binary}" "$@" 2>&1)" || die "${binary} $* failed: ${output}"
  grep -qF -- "${needle}" <<<"${output}" || die "${binary} $* printed '${output}', expected '${needle}'"
}
