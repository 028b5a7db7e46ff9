"""``messaging dev`` as a user runs it: a real process in a fresh directory, on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import free_port


@dataclass
class DevProcess:
    url: str
    printed: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_dev(cwd: Path, **env: str) -> AsyncIterator[DevProcess]:
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MESSAGING_")}
    full_env.update(
        {
            "MESSAGING_GRPC_PORT": str(free_port()),
            "MESSAGING_METRICS_PORT": str(free_port()),
            "MESSAGING_CONNECTIONS_ADDRESS": f"127.0.0.1:{free_port()}",
            **env,
        }
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "messaging.cli", "dev", "--port", str(port),
        cwd=cwd, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    dev = DevProcess(url=f"http://127.0.0.1:{port}")
    try:
        async with asyncio.timeout(60):
            while True:
                line = (await process.stdout.readline()).decode()
                assert line, "messaging dev exited before it was ready:\n" + "".join(dev.printed)
                dev.printed.append(line)
                if "Uvicorn running on" in line:
                    break
        yield dev
    finally:
        process.terminate()
        await process.wait()
