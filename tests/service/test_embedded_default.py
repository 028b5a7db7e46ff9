"""The README's first command: `messaging dev` runs the whole platform with nothing installed."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

from tests.support.servers import free_port
from tests.support.service import Device


async def test_messaging_dev_serves_demo_users_on_sqlite_with_printed_tokens(
    tmp_path: Path,
) -> None:
    port, grpc_port, connections_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    env.update(
        {
            "MESSAGING_GRPC_PORT": str(grpc_port),
            "MESSAGING_METRICS_PORT": str(free_port()),
            "MESSAGING_CONNECTIONS_ADDRESS": f"127.0.0.1:{connections_port}",
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "messaging.cli", "dev", "--port", str(port),
        cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    tokens: dict[str, str] = {}
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await process.stdout.readline()).decode()
                assert line, "messaging dev exited before it was ready"
                if found := re.match(r"\s+token for (\w+): (\S+)", line):
                    tokens[found.group(1)] = found.group(2)
                if "Uvicorn running on" in line:
                    break
        assert set(tokens) == {"alice", "bob", "carol", "dave"}
        url = f"http://127.0.0.1:{port}"
        alice, bob = Device(url, tokens["alice"]), Device(url, tokens["bob"])
        await alice.connect()
        await bob.connect()
        conversation = await alice.ok("createConversation", {"participantId": "bob"})
        sent = await alice.ok(
            "sendMessage", {"conversationId": conversation["id"], "content": "hello from dev"}
        )
        assert await bob.next("newMessage") == sent
        refused = await alice.call("createConversation", {"participantId": "dave"})
        assert refused["error"]["code"] == "FORBIDDEN"  # not a demo connection
        await alice.disconnect()
        await bob.disconnect()
    finally:
        process.terminate()
        await process.wait()
    assert (tmp_path / "messaging.db").exists()
