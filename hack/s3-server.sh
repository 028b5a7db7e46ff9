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
# first run on a machine pays for the build; later runs return at once. The caching (a lock per
# key, a scratch build moved into place once verified) is hack/lib/cached-go-build.sh, shared
# with hack/k8s-tools.sh.
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
# shellcheck source=hack/lib/cached-go-build.sh
source "$(dirname "$0")/lib/cached-go-build.sh"

# Bump when the way the server is built changes, so old caches are not reused.
readonly SCRIPT_VERSION=1
readonly VERSITYGW_VERSION=v1.8.0
readonly MODULE=github.com/versity/versitygw

TOOL=s3-server
KEY="versitygw-${VERSITYGW_VERSION#v}_s${SCRIPT_VERSION}"
ROOT="${MESSAGING_S3_SERVER_DIR:-${HOME}/.cache/messaging-platform/s3-server}"
RESULT="${ROOT}/${KEY}/bin/versitygw"
PRINT_FLAG=--print-binary

is_complete() { [[ -x "${RESULT}" ]]; }

build() {
  # The version stamp is what upstream's Makefile sets (main.Version); -s -w as its release builds.
  GOBIN="${OUT}/bin" go install -trimpath \
    -ldflags "-s -w -X main.Version=${VERSITYGW_VERSION} -X main.Build=module" \
    "${MODULE}/cmd/versitygw@${VERSITYGW_VERSION}"
}

verify() { expect versitygw "${VERSITYGW_VERSION}" --version; }

build_info() { printf 'versitygw %s\nscript %s\n' "${VERSITYGW_VERSION}" "${SCRIPT_VERSION}"; }

cached_go_build "$@"
