#!/usr/bin/env bash
# Regenerates the Python gRPC code (and .pyi stubs) from protos/ into service/messaging/proto/.
# `hack/gen-protos.sh --check` fails when the checked-in code is not what the protos produce.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
export PATH="$(dirname "$python"):$PATH"  # protoc-gen-mypy lives beside the interpreter
out="$root/service/messaging/proto"

generate() {
  local dest="$1" work
  work="$(mktemp -d)"
  # The virtual path maps protos/ onto the package messaging.proto, so the generated imports
  # read `from messaging.proto.messaging.v1 import messaging_pb2`.
  (cd "$root" && "$python" -m grpc_tools.protoc \
    -Imessaging/proto=protos \
    --python_out="$work" --mypy_out=quiet:"$work" \
    --grpc_python_out="$work" --mypy_grpc_out=quiet:"$work" \
    protos/connections/v1/connections.proto protos/messaging/v1/messaging.proto)
  find "$work" -type d -exec touch {}/__init__.py \;
  touch "$work/messaging/proto/py.typed"
  rm -rf "$dest"
  mv "$work/messaging/proto" "$dest"
  rm -rf "$work"
}

if [[ "${1:-}" == "--check" ]]; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  generate "$tmp/proto"
  if ! diff -r -x __pycache__ "$tmp/proto" "$out" >/dev/null; then
    diff -r -x __pycache__ "$tmp/proto" "$out" | head -20
    echo "generated gRPC code is stale: run hack/gen-protos.sh" >&2
    exit 1
  fi
  echo "generated gRPC code is up to date"
else
  generate "$out"
  echo "generated into ${out#"$root"/}"
fi
