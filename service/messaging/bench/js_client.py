"""``messaging bench --client js``: a worker whose load is driven by the official socket.io-client.

A second load generator, so that no figure depends on our own client's cost: the worker process
starts ``js_load.mjs`` under Node.js and relays its JSON lines (ready, progress, done) to the
coordinator exactly as ``load.Worker`` reports them. The Node.js script keeps the same ledger
(``accounting.Ledger``'s rules), so the run's result has the same schema whichever client drove
it. Tokens are minted here (PyJWT), so the script needs nothing but socket.io-client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from messaging.bench.load import Report, SetupError, WorkerPlan, mint_token, owned_pairs, user_id

SCRIPT = Path(__file__).with_name("js_load.mjs")
NODE_MODULES_ENV = "MESSAGING_BENCH_NODE_MODULES"
# In a checkout of this repository: the Node.js clients the tests use (``npm ci`` in tests/node).
_CHECKOUT_NODE_MODULES = Path(__file__).resolve().parents[3] / "tests" / "node" / "node_modules"


def default_node_modules() -> str:
    """Where socket.io-client is installed: $MESSAGING_BENCH_NODE_MODULES, else the checkout's."""
    return os.environ.get(NODE_MODULES_ENV) or str(_CHECKOUT_NODE_MODULES)


def check_installed(node_modules: str) -> str | None:
    """None when Node.js and socket.io-client are there, else what is missing."""
    if shutil.which("node") is None:
        return "node is not installed (needed by --client js)"
    if not (Path(node_modules) / "socket.io-client" / "package.json").exists():
        return (
            f"socket.io-client is not installed under {node_modules} (run `npm ci` in "
            f"tests/node, or point --node-modules / ${NODE_MODULES_ENV} at a node_modules that "
            "has it)"
        )
    return None


# What the script reads of the plan (besides the tokens).
_SCRIPT_FIELDS = (
    "urls",
    "users",
    "devices",
    "run_id",
    "worker",
    "workers",
    "duration_s",
    "warmup_s",
    "window",
    "rate",
    "content_chars",
    "ack_timeout_s",
    "drain_s",
    "connect_concurrency",
    "connect_timeout_s",
)


def _tally_wire(js: dict[str, Any]) -> dict[str, Any]:
    """The script's tally (latency lists) in ``accounting.Tally``'s wire form (array bytes)."""
    return {
        "counters": js["counters"],
        "errors": js["errors"],
        "delivery_us": array("q", js["delivery_us"]).tobytes(),
        "ack_us": array("q", js["ack_us"]).tobytes(),
    }


class JsWorker:
    """Runs one worker's share of the load in a Node.js child; same reports as ``Worker``."""

    def __init__(self, plan: WorkerPlan, report: Report) -> None:
        self.plan = plan
        self.report = report

    def _script_plan(self) -> bytes:
        plan = self.plan
        pairs = owned_pairs(plan.users, plan.worker, plan.workers)
        users = [u for k in pairs for u in (2 * k, 2 * k + 1)]
        tokens = {
            str(u): mint_token(
                plan.jwt_secret, user_id(plan.run_id, u), plan.token_ttl_s, plan.jwt_algorithm
            )
            for u in users
        }
        fields = _SCRIPT_FIELDS
        return orjson.dumps({**{f: getattr(plan, f) for f in fields}, "tokens": tokens}) + b"\n"

    async def run_load(self, go: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        node = shutil.which("node")
        if node is None:
            raise SetupError("node is not installed (needed by --client js)")
        proc = await asyncio.create_subprocess_exec(
            node,
            str(SCRIPT),
            self.plan.node_modules,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 30,  # the last line carries every latency of the run
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(self._script_plan())
            await proc.stdin.drain()
            ready = await self._until(proc, "ready")
            self.report("ready", ready)
            await go()
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            done = await self._until(proc, "done")
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        done["tally"] = _tally_wire(done["tally"])
        return done

    async def _until(self, proc: asyncio.subprocess.Process, kind: str) -> dict[str, Any]:
        """Relay the script's progress lines until it reports ``kind`` (or fails)."""
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                raise SetupError(f"the Node.js load script exited (status {await proc.wait()})")
            message = orjson.loads(line)
            got = message.pop("kind")
            if got == "failed":
                raise SetupError(f"Node.js load script: {message.get('error')}")
            if got == "progress":
                self.report("progress", message)
            elif got == kind:
                return dict(message)
