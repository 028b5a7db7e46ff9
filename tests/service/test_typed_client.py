"""The typed client contract: generated from the payload models, current, and true on the wire."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from messaging import contract
from tests.support.service import RunningService, unique

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "tests" / "node"
TSC = NODE / "node_modules" / ".bin" / "tsc"

# tsc writes tests/node/dist/ in the working tree: under pytest-xdist (`--dist loadgroup`) these
# tests run on one worker, so two compilations never write the same file at once.
pytestmark = pytest.mark.xdist_group("tests-node-dist")


def _tsc(*args: str) -> subprocess.CompletedProcess[str]:
    assert TSC.exists(), "run `npm ci` in tests/node (hack/test.sh)"
    return subprocess.run(
        [str(TSC), *args], cwd=NODE, capture_output=True, text=True, check=False, timeout=300
    )


def test_the_checked_in_typescript_declarations_are_generated_from_the_current_models() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "messaging.contract", "--check"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert contract.OUTPUT.read_text() == contract.render_typescript()


def test_the_declarations_follow_the_models_bounds_and_optional_fields() -> None:
    text = contract.render_typescript()
    assert "/** 1..2000 characters */\n  content: string;" in text
    assert "clientMessageId?: string | null;" in text  # optional in SendMessage
    assert "clientMessageId: string | null;" in text  # always present in Message
    assert '"VALIDATION_FAILED"' in text


def test_tsc_refuses_a_client_that_breaks_the_contract(tmp_path: Path) -> None:
    wrong = NODE / "dist" / f"wrong_{tmp_path.name}.ts"
    wrong.parent.mkdir(exist_ok=True)
    wrong.write_text(
        'import type { Socket } from "socket.io-client";\n'
        "import type { ClientToServerEvents, ServerToClientEvents } from "
        '"../../../clients/typescript/messaging-events.js";\n'
        "declare const s: Socket<ServerToClientEvents, ClientToServerEvents>;\n"
        's.emit("sendMessage", { conversationId: 1, text: "hi" }, () => {});\n'
    )
    try:
        done = _tsc(
            "--noEmit", "--strict", "--skipLibCheck", "--module", "nodenext",
            "--moduleResolution", "nodenext", str(wrong),
        )  # fmt: skip
    finally:
        wrong.unlink()
    assert done.returncode != 0
    # Line 4, column 25: `conversationId: 1`, a number where the contract says a UUID string.
    assert "(4,25): error TS2322" in done.stdout, done.stdout


async def test_the_typed_example_client_type_checks_and_talks_to_a_live_service(
    svc: RunningService,
) -> None:
    assert set(svc.service.sockets.events) == set(contract.CLIENT_EVENTS), (
        "a socket event without its entry in messaging.contract.CLIENT_EVENTS (or the reverse)"
    )
    compiled = await asyncio.to_thread(_tsc, "-p", "tsconfig.json")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    alice, bob = unique("alice"), unique("bob")
    svc.connect_users((alice, bob))
    node = shutil.which("node")
    assert node is not None
    process = await asyncio.create_subprocess_exec(
        node, str(NODE / "dist" / "typed_client.js"),
        svc.url, svc.token(alice), svc.token(bob), bob,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert set(result["conversation"]) == set(contract.Conversation.__annotations__)
    assert set(result["sent"]) == set(contract.Message.__annotations__)
    assert set(result["received"]) == set(contract.NewMessage.__annotations__)
    assert result["received"]["id"] == result["sent"]["id"]
    assert result["updated"] == 1
    assert result["refused"] == "VALIDATION_FAILED"
