"""A small TCP load balancer in front of replicas, routing only to those whose /readyz is 200.

It stands in for a Kubernetes Service: new connections go to ready backends (round robin), and
a backend that turns unready stops getting new connections while existing ones carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import httpx

from tests.support.replicas import Replica


class Balancer:
    def __init__(self, backends: list[Replica]) -> None:
        self.backends = list(backends)
        self.ready: set[str] = set()
        self.routed: Counter[str] = Counter()
        self._cycle = itertools.count()
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        await self._check()
        self._watch = asyncio.create_task(self._watch_readiness())
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()

    async def _check(self) -> None:
        # Load balancers give health checks seconds (Kubernetes' probe default is 1 s, cloud
        # balancers' 5 s): a replica busy with a burst of handshakes is slow, not gone.
        async with httpx.AsyncClient(timeout=2.0) as http:
            for backend in self.backends:
                try:
                    ok = (await http.get(f"{backend.url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    ok = False
                (self.ready.add if ok else self.ready.discard)(backend.name)

    async def _watch_readiness(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            await self._check()

    def _pick(self) -> Replica | None:
        candidates = [b for b in self.backends if b.name in self.ready]
        if not candidates:
            return None
        return candidates[next(self._cycle) % len(candidates)]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        backend = self._pick()
        if backend is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", backend.http_port)
        except OSError:
            writer.close()
            return
        self.routed[backend.name] += 1
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.close()


@contextlib.asynccontextmanager
async def balancing(backends: list[Replica]) -> AsyncIterator[Balancer]:
    balancer = Balancer(backends)
    await balancer.start()
    try:
        yield balancer
    finally:
        await balancer.stop()
