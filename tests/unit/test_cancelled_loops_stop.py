"""A cancelled background loop stops, also when what it waited for finished at that moment.

On Python 3.11, ``asyncio.wait_for`` loses a cancellation that arrives in the same turn of the
event loop as the awaited result: it returns the result, and the loop runs on (fixed in 3.12).
A service stop that cancels its loops and waits for them then hangs until the watchdog's
deadline. The drain test (``tests/ops/test_drain.py``) failed that way once in a full run: the
replica drained in 3 s and then sat in its stop until the watchdog ended it at 10 s. Timeouts are
``asyncio.timeout`` blocks instead, which keep the cancellation, and ruff bans ``wait_for``
(``pyproject.toml``). The stop also waits a bounded time for its loops and names any that did
not end (``app.cancel_and_wait``).

Each test wakes a loop and cancels it in the same turn, which is the race, made certain. The
backplane's ``subscribe`` had the same flaw by another road: it swallowed every cancellation
while it waited for Redis, to go on when a resubscription dropped its request.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import socketio
from redis.asyncio import Redis

from messaging.app import cancel_and_wait
from messaging.backplane import Backplane
from messaging.delivery import Delivery
from messaging_operator.leadership import LeaderElection


async def stopped(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` ended within a second of its cancellation (it has nothing else to do)."""
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:
        task.cancel()  # give it another chance, so the test's event loop is left clean
        await asyncio.wait([task], timeout=1.0)
    return task in done and task.cancelled()


async def test_a_healer_woken_as_it_is_cancelled_still_stops() -> None:
    delivery = Delivery(socketio.AsyncServer(async_mode="asgi"), replica_id="replica-a")
    healer = asyncio.create_task(delivery.run_healer())
    await asyncio.sleep(0)  # parked on its wake-up event
    delivery.check_all("test")
    healer.cancel()
    assert await stopped(healer)


class _Renewing(LeaderElection):
    """A lease whose renewal returns when the test says, without an API server."""

    entered: asyncio.Event
    answer: asyncio.Event

    async def try_acquire_or_renew(self) -> bool:
        self.entered.set()
        await self.answer.wait()
        self._leading = True
        return True


async def test_a_lease_renewer_cancelled_as_its_renewal_returns_stops() -> None:
    election = _Renewing(
        api=cast(Any, None),
        namespace="default",
        name="messaging-operator",
        identity="operator-a",
        retry_seconds=0.0,
    )
    election.entered, election.answer = asyncio.Event(), asyncio.Event()
    renewer = asyncio.create_task(election.keep())
    await election.entered.wait()
    election.answer.set()
    renewer.cancel()
    assert await stopped(renewer)


async def test_the_stop_gives_up_on_a_task_that_will_not_end_and_names_it() -> None:
    async def obliging() -> None:
        await asyncio.sleep(3600)

    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue  # what a lost cancellation amounts to

    tasks = [
        asyncio.create_task(obliging(), name="obliging"),
        asyncio.create_task(stubborn(), name="stubborn"),
    ]
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    left = await cancel_and_wait(tasks, within=0.2)
    assert loop.time() - started < 1.0
    assert [t.get_name() for t in left] == ["stubborn"]
    assert tasks[0].cancelled()
    released.set()  # the test's event loop is shared: let it end
    await tasks[1]


def _waiting_for_confirmation(user_id: str) -> tuple[Backplane, asyncio.Future[None]]:
    """A listening backplane that asked Redis for ``user_id``'s channel and has no answer yet."""
    backplane = Backplane(Redis(), replica_id="replica-a")  # never connects: nothing is sent
    backplane._healthy.set()
    asked: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    backplane._pending[backplane.channel(user_id)] = asked
    return backplane, asked


async def test_a_subscribe_cancelled_while_it_waits_for_redis_is_cancelled() -> None:
    backplane, _ = _waiting_for_confirmation("u")
    subscriber = asyncio.create_task(backplane.subscribe("u"))
    await asyncio.sleep(0)  # waiting for the confirmation
    subscriber.cancel()
    assert await stopped(subscriber)


async def test_a_subscribe_whose_request_is_dropped_returns_quietly() -> None:
    # A resubscription drops the requests in flight; their waiters go on without a confirmation.
    backplane, asked = _waiting_for_confirmation("u")
    subscriber = asyncio.create_task(backplane.subscribe("u"))
    await asyncio.sleep(0)
    asked.cancel()
    await subscriber
    assert subscriber.done() and not subscriber.cancelled()
