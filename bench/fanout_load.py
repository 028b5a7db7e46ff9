"""The fan-out benchmark's load generator: who sits where, who sends to whom, and the ledger.

Users come in pairs: a sender with one socket on replica ``p mod R`` and a recipient with two
sockets on the two next replicas, so every message reaches the recipient twice and both times
through Redis (never on the replica that took the send). Idle users hold one socket each on
replicas that carry no conversation at all. Sockets are ``messaging.bench``'s lean wire client
(raw websocket, Engine.IO/Socket.IO framing by hand, callbacks from ``data_received``), and the
bookkeeping is its ``Ledger``: expected deliveries per message, losses, duplicates, latencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from messaging.bench.accounting import Ledger, Tally, ack_error
from messaging.bench.client import ConnectRefusedError, SocketClient
from messaging.bench.load import mint_token

_RATE_TICK_SECONDS = 0.002
_DRAIN_TICK_SECONDS = 0.05


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


class Sender:
    __slots__ = ("conversation_id", "device", "expected", "inflight", "recipient")

    def __init__(self, device: Device, recipient: str, expected: frozenset[int]) -> None:
        self.device = device
        self.recipient = recipient
        self.expected = expected
        self.conversation_id = ""
        self.inflight = 0


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
    disconnects: int = 0
    foreign: int = 0
    _ledger: Ledger = field(default_factory=Ledger)
    _prefix: str = ""
    _sending: bool = False
    _seq_sender: dict[int, Sender] = field(default_factory=dict)
    _skipped: int = 0
    _window: int = 1
    _closed_loop: bool = True
    _padding: str = "x" * 64

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
            self.senders.append(Sender(sender, recipient, frozenset(d.index for d in devices)))
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
            {"participantIds": [s.device.user for s in others], "title": title},
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
            device.client.on_event = self._event_handler(device.index)
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

        async def create(sender: Sender) -> None:
            async with gate:
                answer = await sender.device.client.call(
                    "createConversation", {"participantId": sender.recipient}, limit_s=30.0
                )
            if not (isinstance(answer, dict) and answer.get("ok")):
                raise SetupError(f"createConversation failed: {answer!r}")
            sender.conversation_id = answer["data"]["id"]

        await asyncio.gather(*(create(s) for s in self.senders))

    def close(self) -> None:
        for device in self.devices:
            device.client.on_close = None
            with contextlib.suppress(ConnectionError):
                device.client.close()

    @property
    def connected(self) -> int:
        return sum(1 for d in self.devices if d.client.connected)

    # --- hot path -------------------------------------------------------------------------

    def _event_handler(self, device_index: int) -> Callable[[str, Any, int], None]:
        def on_event(name: str, data: Any, now: int) -> None:
            if name != "newMessage" or not isinstance(data, dict):
                return
            cmid = data.get("clientMessageId")
            prefix = self._prefix
            if isinstance(cmid, str) and prefix and cmid.startswith(prefix):
                self._ledger.delivered(int(cmid[len(prefix) :]), device_index, now)
            else:
                self.foreign += 1  # a straggler of an earlier step, or someone else's

        return on_event

    def _closed(self, _client: SocketClient) -> None:
        self.disconnects += 1

    def _send(self, sender: Sender) -> None:
        now = time.monotonic_ns()
        seq = self._ledger.sent(now, sender.expected)
        sender.inflight += 1
        self._seq_sender[seq] = sender
        payload = {
            "conversationId": sender.conversation_id,
            "content": f"{now} {self._padding}",
            "clientMessageId": f"{self._prefix}{seq}",
        }
        try:
            sender.device.client.emit("sendMessage", payload, lambda a: self._acked(seq, a))
        except ConnectionError:
            self._seq_sender.pop(seq, None)
            sender.inflight -= 1
            self._ledger.answered(seq, now, "DISCONNECTED")

    def _acked(self, seq: int, answer: Any) -> None:
        fresh = self._ledger.answered(seq, time.monotonic_ns(), ack_error(answer))
        sender = self._seq_sender.pop(seq, None)
        if not fresh or sender is None:
            return
        sender.inflight -= 1
        if self._sending and self._closed_loop:
            self._send(sender)

    # --- one step -------------------------------------------------------------------------

    async def run_step(
        self,
        step: Step,
        step_number: int,
        on_window_start: Callable[[], None],
        on_window_end: Callable[[], None],
    ) -> StepOutcome:
        """Send for warm-up + duration, then wait for stragglers; the callbacks mark the window."""
        self._ledger = Ledger()
        self._prefix = f"{self.run_id}.{step_number}."
        self._seq_sender = {}
        self._skipped = 0
        self._window = step.window
        self._closed_loop = step.rate is None
        foreign_before, disconnects_before = self.foreign, self.disconnects
        for sender in self.senders:
            sender.inflight = 0
        start = time.monotonic_ns()
        measure_from = start + int(step.warmup_s * 1e9)
        end = measure_from + int(step.duration_s * 1e9)
        self._ledger.set_window(measure_from, end)
        self._sending = True
        marks = asyncio.create_task(self._marks(measure_from, end, on_window_start, on_window_end))
        sweeper = asyncio.create_task(self._sweep(step.ack_timeout_s))
        try:
            if step.rate is None:
                for sender in self.senders:
                    for _ in range(step.window):
                        self._send(sender)
                await asyncio.sleep(max(0.0, (end - time.monotonic_ns()) / 1e9))
            else:
                await self._paced(start, end, step.rate)
            self._sending = False
            await marks
            for _ in range(max(1, int(step.drain_s / _DRAIN_TICK_SECONDS))):
                if not (self._ledger.in_flight or self._ledger.undelivered()):
                    break
                await asyncio.sleep(_DRAIN_TICK_SECONDS)
        finally:
            self._sending = False
            marks.cancel()
            sweeper.cancel()
        return StepOutcome(
            tally=self._ledger.close(),
            measured_s=step.duration_s,
            skipped_by_window=self._skipped,
            foreign_events=self.foreign - foreign_before,
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

    async def _paced(self, start_ns: int, end_ns: int, rate: float) -> None:
        """Open loop: ``rate`` sends per second round-robin; a sender at its window skips."""
        senders = self.senders
        issued = 0
        turn = 0
        while (now := time.monotonic_ns()) < end_ns:
            due = int(rate * (now - start_ns) / 1e9) - issued
            for _ in range(due):
                issued += 1
                for _ in range(len(senders)):
                    sender = senders[turn]
                    turn = (turn + 1) % len(senders)
                    if sender.inflight < self._window:
                        self._send(sender)
                        break
                else:
                    self._skipped += 1
            await asyncio.sleep(_RATE_TICK_SECONDS)

    async def _sweep(self, timeout_s: float) -> None:
        timeout_ns = int(timeout_s * 1e9)
        while True:
            await asyncio.sleep(0.5)
            for seq in self._ledger.overdue(time.monotonic_ns() - timeout_ns):
                self._ledger.timed_out(seq)
                sender = self._seq_sender.pop(seq, None)
                if sender is not None:
                    sender.inflight -= 1
                    if self._sending and self._closed_loop:
                        self._send(sender)
