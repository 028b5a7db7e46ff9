"""Clients written with other implementations speak to the service from the shared protos."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from tests.service.test_grpc import _seed
from tests.support.service import RunningService, devices, open_conversation, unique

NODE_CLIENTS = Path(__file__).resolve().parents[1] / "node"


async def node(script: str, *args: str) -> Any:
    """Run a Node.js client script (its packages are installed by hack/test.sh) and parse it."""
    binary = shutil.which("node")
    assert binary is not None, "Node.js is required for these tests"
    assert (NODE_CLIENTS / "node_modules").is_dir(), "run `npm ci` in tests/node (hack/test.sh)"
    process = await asyncio.create_subprocess_exec(
        binary, str(NODE_CLIENTS / script), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_a_grpc_js_client_reads_history_from_the_protos_directory(
    svc: RunningService,
) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    ids = await _seed(svc, conversation, alice, 120)
    result = await node("grpc_history.mjs", svc.grpc_target, svc.token(bob), conversation, "50")
    assert result["ids"] == list(reversed(ids))
    assert result["pages"] == 3
    assert result["statuses"] == ["MESSAGE_STATUS_SENT"]


async def test_a_grpc_js_client_gets_standard_status_codes(svc: RunningService) -> None:
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    async with devices(svc, alice) as [a]:
        conversation = await open_conversation(svc, a, bob)
    outsider = await node(
        "grpc_history.mjs", svc.grpc_target, svc.token(unique("eve")), conversation, "50"
    )
    unauthenticated = await node("grpc_history.mjs", svc.grpc_target, "junk", conversation, "50")
    assert outsider["error"]["code"] == 7  # PERMISSION_DENIED
    assert unauthenticated["error"]["code"] == 16  # UNAUTHENTICATED
