"""One load-generator worker: its users' sockets, their conversations, the send loop.

Users come in pairs (2k, 2k+1) that talk to each other; a worker owns whole pairs, so both ends
of every conversation (and so the whole ledger of its messages) live in one process and workers
never need to talk to each other. Device d of user u sits on replica (u + d) mod R: with two
replicas and one device each, every message crosses replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import jwt

from messaging.bench.accounting import Ledger, ack_error
from messaging.bench.client import ConnectRefusedError, SocketClient

Report = Callable[[str, dict[str, Any]], None]
_PROGRESS_SECONDS = 1.0
_RATE_TICK_SECONDS = 0.002
_DRAIN_TICK_SECONDS = 0.05


@dataclass(frozen=True)
class WorkerPlan:
    mode: Literal["load", "idle"]
    urls: tuple[str, ...]
    users: int
    devices: int
    jwt_secret: str
    run_id: str
    worker: int = 0
    workers: int = 1
    duration_s: float = 10.0
    warmup_s: float = 0.0
    window: int = 1
    rate: float | None = None  # this worker's share of the offered rate, messages per second
    content_chars: int = 64
    ack_timeout_s: float = 10.0
    drain_s: float = 10.0
    connect_concurrency: int = 64
    connect_timeout_s: float = 15.0
    token_ttl_s: int = 86_400
    jwt_algorithm: str = "HS256"
    client: Literal["python", "js"] = "python"  # js: the official socket.io-client (js_client)
    node_modules: str = ""  # with client "js": where socket.io-client is installed


def user_id(run_id: str, user: int) -> str:
    return f"bench-{run_id}-{user}"


def replica_of(user: int, device: int, replicas: int) -> int:
    """Round-robin placement that puts the two ends of a pair on different replicas."""
    return (user + device) % replicas


def owned_pairs(users: int, worker: int, workers: int) -> list[int]:
    """Pair numbers k (users 2k and 2k+1) that ``worker`` of ``workers`` drives."""
    return [k for k in range(users // 2) if k % workers == worker]


def mint_token(secret: str, subject: str, ttl_s: int, algorithm: str = "HS256") -> str:
    now = int(time.time())
    return jwt.encode({"sub": subject, "iat": now, "exp": now + ttl_s}, secret, algorithm=algorithm)


class SetupError(Exception):
    """The run could not start: sockets did not connect or conversations were refused."""


class _Device:
    __slots__ = ("client", "index", "number", "replica", "user")

    def __init__(self, index: int, user: int, number: int, replica: int) -> None:
        self.index = index
        self.user = user
        self.number = number
        self.replica = replica
        self.client = SocketClient()


class HasClient(Protocol):
    client: SocketClient


class Sender:
    """One sending socket: its conversation, the devices each message must reach, its window."""

    __slots__ = ("conversation_id", "device", "expected", "inflight")

    def __init__(self, device: HasClient, conversation_id: str, expected: frozenset[int]) -> None:
        self.device = device
        self.conversation_id = conversation_id
        self.expected = expected
        self.inflight = 0


class SendLoop:
    """The hot path every load generator shares (``Worker`` here, bench/fanout_load.py's steps):
    sends tagged ``prefix + seq`` so deliveries are matched to the ledger, closed loop (each ack
    sends again, ``window`` in flight per sender) or open loop (``paced``), ack timeouts, and the
    drain that waits for stragglers."""

    def __init__(self, prefix: str, *, window: int, closed_loop: bool, content_chars: int) -> None:
        self.ledger = Ledger()
        self.prefix = prefix
        self.window = window
        self.closed_loop = closed_loop
        self.sending = False
        self.skipped = 0
        self.foreign = 0
        self._seq_sender: dict[int, Sender] = {}
        self._padding = "x" * content_chars

    def event_handler(self, device_index: int) -> Callable[[str, Any, int], None]:
        ledger = self.ledger
        prefix = self.prefix
        cut = len(prefix)

        def on_event(name: str, data: Any, now: int) -> None:
            if name != "newMessage" or not isinstance(data, dict):
                return
            cmid = data.get("clientMessageId")
            if isinstance(cmid, str) and cmid.startswith(prefix):
                ledger.delivered(int(cmid[cut:]), device_index, now)
            else:
                self.foreign += 1  # a straggler of an earlier run or step, or someone else's

        return on_event

    def send(self, sender: Sender) -> None:
        now = time.monotonic_ns()
        seq = self.ledger.sent(now, sender.expected)
        sender.inflight += 1
        self._seq_sender[seq] = sender
        payload = {
            "conversationId": sender.conversation_id,
            "content": f"{now} {self._padding}",
            "clientMessageId": f"{self.prefix}{seq}",
        }
        try:
            sender.device.client.emit(
                "sendMessage", payload, lambda answer: self._acked(seq, answer)
            )
        except ConnectionError:
            self._seq_sender.pop(seq, None)
            sender.inflight -= 1
            self.ledger.answered(seq, now, "DISCONNECTED")

    def _acked(self, seq: int, answer: Any) -> None:
        fresh = self.ledger.answered(seq, time.monotonic_ns(), ack_error(answer))
        sender = self._seq_sender.pop(seq, None)
        if not fresh or sender is None:
            return
        sender.inflight -= 1
        if self.sending and self.closed_loop:
            self.send(sender)

    def fill_windows(self, senders: list[Sender]) -> None:
        """Closed loop: ``window`` sends from every sender; each ack sends the next."""
        for sender in senders:
            for _ in range(self.window):
                self.send(sender)

    async def paced(self, senders: list[Sender], start_ns: int, end_ns: int, rate: float) -> None:
        """Open-loop sending at ``rate``, spread round-robin; a sender at its window skips."""
        window = self.window
        issued = 0
        turn = 0
        while (now := time.monotonic_ns()) < end_ns:
            due = int(rate * (now - start_ns) / 1e9) - issued
            for _ in range(due):
                issued += 1
                for _ in range(len(senders)):
                    sender = senders[turn]
                    turn = (turn + 1) % len(senders)
                    if sender.inflight < window:
                        self.send(sender)
                        break
                else:
                    self.skipped += 1
            await asyncio.sleep(_RATE_TICK_SECONDS)

    async def sweep_timeouts(self, timeout_s: float) -> None:
        """Count unanswered sends as timed out after ``timeout_s`` (closed loop: send again)."""
        timeout_ns = int(timeout_s * 1e9)
        while True:
            await asyncio.sleep(0.5)
            for seq in self.ledger.overdue(time.monotonic_ns() - timeout_ns):
                self.ledger.timed_out(seq)
                sender = self._seq_sender.pop(seq, None)
                if sender is not None:
                    sender.inflight -= 1
                    if self.sending and self.closed_loop:
                        self.send(sender)

    async def drain(self, drain_s: float) -> None:
        """Wait up to ``drain_s`` for the acks and deliveries still outstanding."""
        for _ in range(max(1, int(drain_s / _DRAIN_TICK_SECONDS))):
            if not (self.ledger.in_flight or self.ledger.undelivered()):
                break
            await asyncio.sleep(_DRAIN_TICK_SECONDS)


class Worker:
    def __init__(self, plan: WorkerPlan, report: Report) -> None:
        self.plan = plan
        self.report = report
        self.loop = SendLoop(
            f"{plan.run_id}.{plan.worker}.",
            window=plan.window,
            closed_loop=plan.rate is None,
            content_chars=plan.content_chars,
        )
        self.ledger = self.loop.ledger
        self.devices: list[_Device] = []
        self.by_user: dict[int, list[_Device]] = {}
        self.senders: list[Sender] = []
        self.disconnects = 0
        self.connect_failures: dict[str, int] = {}
        self.first_failure = ""

    # --- setup ----------------------------------------------------------------------------

    def _layout(self) -> None:
        plan = self.plan
        for pair in owned_pairs(plan.users, plan.worker, plan.workers):
            for user in (2 * pair, 2 * pair + 1):
                for number in range(plan.devices):
                    device = _Device(
                        len(self.devices), user, number, replica_of(user, number, len(plan.urls))
                    )
                    self.devices.append(device)
                    self.by_user.setdefault(user, []).append(device)

    async def connect(self) -> int:
        """Open every device's socket; returns how many connected."""
        self._layout()
        plan = self.plan
        tokens = {
            user: mint_token(
                plan.jwt_secret, user_id(plan.run_id, user), plan.token_ttl_s, plan.jwt_algorithm
            )
            for user in self.by_user
        }
        gate = asyncio.Semaphore(plan.connect_concurrency)

        async def open_one(device: _Device) -> bool:
            device.client.on_event = self.loop.event_handler(device.index)
            device.client.on_close = self._closed
            async with gate:
                try:
                    await device.client.connect(
                        plan.urls[device.replica],
                        tokens[device.user],
                        limit_s=plan.connect_timeout_s,
                    )
                except (ConnectRefusedError, OSError, TimeoutError, ConnectionError) as e:
                    kind = type(e).__name__
                    self.connect_failures[kind] = self.connect_failures.get(kind, 0) + 1
                    self.first_failure = self.first_failure or f"{kind}: {e}"
                    return False
            return True

        results = await asyncio.gather(*(open_one(d) for d in self.devices))
        return sum(results)

    async def make_conversations(self) -> None:
        """Pair users with ``createConversation`` and prepare one sender per user's device 0."""
        plan = self.plan
        gate = asyncio.Semaphore(plan.connect_concurrency)

        async def pair_up(first: int) -> None:
            second = first + 1
            async with gate:
                answer = await self.by_user[first][0].client.call(
                    "createConversation",
                    {"participantId": user_id(plan.run_id, second)},
                    limit_s=plan.ack_timeout_s,
                )
            if not (isinstance(answer, dict) and answer.get("ok")):
                raise SetupError(f"createConversation failed: {answer!r}")
            conversation_id = answer["data"]["id"]
            for author, other in ((first, second), (second, first)):
                own = self.by_user[author]
                expected = frozenset(d.index for d in self.by_user[other]) | frozenset(
                    d.index for d in own[1:]
                )
                self.senders.append(Sender(own[0], conversation_id, expected))

        await asyncio.gather(*(pair_up(u) for u in sorted(self.by_user) if u % 2 == 0))

    def _closed(self, _client: SocketClient) -> None:
        self.disconnects += 1

    # --- phases ---------------------------------------------------------------------------

    async def run_load(self, go: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        plan = self.plan
        connected = await self.connect()
        if connected != len(self.devices):
            raise SetupError(
                f"{len(self.devices) - connected} of {len(self.devices)} sockets failed to "
                f"connect: {self.connect_failures}; first: {self.first_failure}"
            )
        await self.make_conversations()
        self.report("ready", {"sockets": connected})
        await go()

        cpu_start = time.process_time()
        start = time.monotonic_ns()
        measure_from = start + int(plan.warmup_s * 1e9)
        end = measure_from + int(plan.duration_s * 1e9)
        self.ledger.set_window(measure_from, end)
        loop = self.loop
        loop.sending = True
        sweeper = asyncio.create_task(loop.sweep_timeouts(plan.ack_timeout_s))
        progress = asyncio.create_task(self._progress())
        try:
            if plan.rate is None:
                loop.fill_windows(self.senders)
                await asyncio.sleep((end - time.monotonic_ns()) / 1e9)
            else:
                await loop.paced(self.senders, start, end, plan.rate)
            loop.sending = False
            await loop.drain(plan.drain_s)
        finally:
            loop.sending = False
            sweeper.cancel()
            progress.cancel()
        cpu_seconds = time.process_time() - cpu_start
        tally = self.ledger.close()
        for device in self.devices:
            device.client.on_close = None
            device.client.close()
        return {
            "tally": tally.to_wire(),
            "cpu_seconds": cpu_seconds,
            "sockets": connected,
            "skipped": loop.skipped,
            "foreign": loop.foreign,
            "disconnects": self.disconnects,
        }

    async def _progress(self) -> None:
        while True:
            await asyncio.sleep(_PROGRESS_SECONDS)
            self.report("progress", self.snapshot())

    def snapshot(self) -> dict[str, Any]:
        tally = self.ledger.tally
        return {
            "sent": tally.sent,
            "acked": tally.acked,
            "delivered": tally.delivered,
            "errors": sum(tally.errors.values()),
            "in_flight": self.ledger.in_flight,
        }

    async def run_idle(self, release: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        """Hold every socket open until released; report how many stayed connected."""
        connected = await self.connect()
        self.report("ready", {"sockets": connected, "failures": self.connect_failures})
        await release()
        alive = sum(1 for d in self.devices if d.client.connected)
        for device in self.devices:
            device.client.on_close = None
            with contextlib.suppress(ConnectionError):
                device.client.close()
        return {
            "sockets": connected,
            "alive_at_end": alive,
            "failures": self.connect_failures,
            "disconnects": self.disconnects,
        }
