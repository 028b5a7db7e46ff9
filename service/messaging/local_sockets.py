"""This process's sockets: the user of each socket id, and each user's sockets here.

The in-memory session store the transports ask (``user_of`` a sid, on every event) and the
drain walks (``sids``). It does no I/O: ``presence.py`` changes it when a socket comes or goes
and publishes this process's share of it to the cluster-wide registry in Redis, which is a job
of its own (queued writes, heartbeats, resyncs, sweeps).
"""

from __future__ import annotations

from collections.abc import Iterator

from messaging import metrics


class LocalSockets:
    """Socket ids of this process by user, and the reverse; the connected-sockets gauges."""

    def __init__(self) -> None:
        self._sockets: dict[str, set[str]] = {}  # user id -> sids on this process
        self._owner: dict[str, str] = {}  # sid -> user id

    def user_of(self, sid: str) -> str | None:
        return self._owner.get(sid)

    def local_users(self) -> set[str]:
        return set(self._sockets)

    def has_user(self, user_id: str) -> bool:
        return user_id in self._sockets

    def socket_count(self) -> int:
        return len(self._owner)

    def sids_of(self, user_id: str) -> set[str]:
        return set(self._sockets.get(user_id, ()))

    def owners(self) -> Iterator[tuple[str, str]]:
        """(sid, user id) of every socket here."""
        return iter(self._owner.items())

    def add(self, user_id: str, sid: str) -> bool:
        """Record a socket; True when it is the user's first on this process."""
        sids = self._sockets.setdefault(user_id, set())
        first = not sids
        sids.add(sid)
        self._owner[sid] = user_id
        self._update_gauges()
        return first

    def remove(self, sid: str) -> tuple[str | None, bool]:
        """Forget a socket; its user (None if unknown) and whether it was their last one here."""
        user_id = self._owner.pop(sid, None)
        if user_id is None:
            return None, False
        sids = self._sockets.get(user_id, set())
        sids.discard(sid)
        last = not sids
        if last:
            self._sockets.pop(user_id, None)
        self._update_gauges()
        return user_id, last

    def _update_gauges(self) -> None:
        metrics.CONNECTED_SOCKETS.set(len(self._owner))
        metrics.CONNECTED_USERS.set(len(self._sockets))
