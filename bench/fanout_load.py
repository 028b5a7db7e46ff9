"""The fan-out benchmark's load generator: who sits where, who sends to whom, and the ledger.

Users come in pairs: a sender with one socket on replica ``p mod R`` and a recipient with two
sockets on the two next replicas, so every message reaches the recipient twice and both times
through Redis (never on the replica that took the send). Idle users hold one socket each on
replicas that carry no conversation at all. Sockets are ``messaging.bench``'s lean wire client
(raw websocket, Engine.IO/Socket.IO framing by hand, callbacks from ``data_received``), and the
bookkeeping is its ``Ledger``: expected deliveries per message, losses, duplicates, latencies.
The send loop itself (closed or open loop, ack timeouts, the drain) is ``messaging.bench``'s
``SendLoop``, one per step; what this adds is the placement and the steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from messaging.bench.accounting import Tally
from messaging.bench.client import ConnectRefusedError, SocketClient
from messaging.bench.load import Sender, SendLoop, mint_token


class SetupError(Exception):
    """Sockets did not connect or a conversation could not be created."""


@dataclass(frozen=True)
class Step:
    """One measured load: open loop at ``rate`` messages/s, or closed loop when ``rate`` is None."""

    name: str
    rate: float | None
    window: int
    duration_s: float
    warmup_s: float
    drain_s: float = 15.0
    ack_timeout_s: float = 15.0


class Device:
    __slots__ = ("client", "index", "replica", "user")

    def __init__(self, index: int, user: str, replica: int) -> None:
        self.index = index
        self.user = user
        self.replica = replica
        self.client = SocketClient()


class PairSender(Sender):
    """A sender of a pair (its recipient's conversation is created by ``make_conversations``)."""

    __slots__ = ("recipient",)

    def __init__(self, device: Device, recipient: str, expected: frozenset[int]) -> None:
        super().__init__(device, "", expected)
        self.recipient = recipient


@dataclass
class StepOutcome:
    tally: Tally
    measured_s: float
    skipped_by_window: int
    foreign_events: int
    disconnects: int


@dataclass
class Population:
    """Every socket of the run, the senders, and the send loop."""

    urls: list[str]
    jwt_secret: str
    run_id: str
    devices: list[Device] = field(default_factory=list)
    senders: list[Sender] = field(default_factory=list)
    pair_senders: list[PairSender] = field(default_factory=list)
    disconnects: int = 0
    foreign: int = 0

    def user(self, kind: str, number: int) -> str:
        return f"fan-{self.run_id}-{kind}{number}"

    def _device(self, user: str, replica: int) -> Device:
        device = Device(len(self.devices), user, replica)
        self.devices.append(device)
        return device

    def add_pairs(self, pairs: int, active_replicas: int) -> list[Device]:
        """Sender p on replica p mod R, its recipient's two sockets on the next two replicas."""
        if active_replicas < 3:
            raise ValueError("the recipient's two devices need two replicas besides the sender's")
        added = []
        for p in range(pairs):
            home = p % active_replicas
            sender = self._device(self.user("s", p), home)
            recipient = self.user("r", p)
            devices = [
                self._device(recipient, (home + 1) % active_replicas),
                self._device(recipient, (home + 2) % active_replicas),
            ]
            paired = PairSender(sender, recipient, frozenset(d.index for d in devices))
            self.senders.append(paired)
            self.pair_senders.append(paired)
            added += [sender, *devices]
        return added

    def add_group(self, members: int, active_replicas: int) -> list[Device]:
        """One group: member m with one socket on replica m mod R, every member a sender whose
        messages are expected on every other member's socket (most of them on other replicas)."""
        devices = [self._device(self.user("g", m), m % active_replicas) for m in range(members)]
        everyone = frozenset(d.index for d in devices)
        for device in devices:
            self.senders.append(Sender(device, "", everyone - {device.index}))
        return devices

    async def make_group(self, title: str) -> None:
        """The first sender creates the group of every sender; all of them send into it."""
        creator, *others = self.senders
        answer = await creator.device.client.call(
            "createConversation",
            {"participantIds": [cast(Device, s.device).user for s in others], "title": title},
            limit_s=30.0,
        )
        if not (isinstance(answer, dict) and answer.get("ok")):
            raise SetupError(f"createConversation (group) failed: {answer!r}")
        for sender in self.senders:
            sender.conversation_id = answer["data"]["id"]

    def add_idle(self, count: int, replica: int, first_number: int) -> list[Device]:
        return [self._device(self.user("idle", first_number + i), replica) for i in range(count)]

    # --- setup ----------------------------------------------------------------------------

    async def connect(self, devices: list[Device], concurrency: int = 64) -> None:
        tokens: dict[str, str] = {}
        for device in devices:
            if device.user not in tokens:
                tokens[device.user] = mint_token(self.jwt_secret, device.user, 86_400)
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []

        async def open_one(device: Device) -> None:
            # Events are counted from the first step on (run_step installs its loop's handler).
            device.client.on_close = self._closed
            async with gate:
                try:
                    await device.client.connect(
                        self.urls[device.replica], tokens[device.user], limit_s=30.0
                    )
                except (ConnectRefusedError, OSError, TimeoutError, ConnectionError) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(open_one(d) for d in devices))
        if failures:
            raise SetupError(
                f"{len(failures)} of {len(devices)} sockets failed to connect; first: {failures[0]}"
            )

    async def make_conversations(self, concurrency: int = 64) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def create(sender: PairSender) -> None:
            async with gate:
                answer = await sender.device.client.call(
                    "createConversation", {"participantId": sender.recipient}, limit_s=30.0
                )
            if not (isinstance(answer, dict) and answer.get("ok")):
                raise SetupError(f"createConversation failed: {answer!r}")
            sender.conversation_id = answer["data"]["id"]

        await asyncio.gather(*(create(s) for s in self.pair_senders))

    def close(self) -> None:
        for device in self.devices:
            device.client.on_close = None
            with contextlib.suppress(ConnectionError):
                device.client.close()

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.client.connected)

    def _closed(self, _client: SocketClient) -> None:
        self.disconnects += 1

    # --- one step -------------------------------------------------------------------------

    async def run_step(
        self,
        step: Step,
        step_number: int,
        on_window_start: Callable[[], None],
        on_window_end: Callable[[], None],
    ) -> StepOutcome:
        """Send for warm-up + duration, then wait for stragglers; the callbacks mark the window."""
        loop = SendLoop(
            f"{self.run_id}.{step_number}.",
            window=step.window,
            closed_loop=step.rate is None,
            content_chars=64,
        )
        for device in self.devices:
            device.client.on_event = loop.event_handler(device.index)
        disconnects_before = self.disconnects
        for sender in self.senders:
            sender.inflight = 0
        start = time.monotonic_ns()
        measure_from = start + int(step.warmup_s * 1e9)
        end = measure_from + int(step.duration_s * 1e9)
        loop.ledger.set_window(measure_from, end)
        loop.sending = True
        marks = asyncio.create_task(self._marks(measure_from, end, on_window_start, on_window_end))
        sweeper = asyncio.create_task(loop.sweep_timeouts(step.ack_timeout_s))
        try:
            if step.rate is None:
                loop.fill_windows(self.senders)
                await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
            else:
                await loop.paced(self.senders, start, end, step.rate)
            loop.sending = False
            await marks
            await loop.drain(step.drain_s)
        finally:
            loop.sending = False
            marks.cancel()
            sweeper.cancel()
        self.foreign += loop.foreign
        return StepOutcome(
            tally=loop.ledger.close(),
            measured_s=step.duration_s,
            skipped_by_window=loop.skipped,
            foreign_events=loop.foreign,
            disconnects=self.disconnects - disconnects_before,
        )

    @staticmethod
    async def _marks(
        start_ns: int, end_ns: int, at_start: Callable[[], None], at_end: Callable[[], None]
    ) -> None:
        await asyncio.sleep(max(0.0, (start_ns - time.monotonic_ns()) / 1e9))
        at_start()
        await asyncio.sleep(max(0.0, (end_ns - time.monotonic_ns()) / 1e9))
        at_end()
