"""When each socket's session ends: one heap per replica instead of a timer per socket.

A socket's session lasts until its token's ``exp`` plus the leeway; ``reauthenticate`` moves that
deadline. Deadlines live in a dict (the truth) and a heap (the order); moving or forgetting a
deadline leaves its old heap entry behind, and ``due`` skips such stale entries when it meets
them, so every operation is O(log n) and a sweep costs only the sessions that are really due.
"""

from __future__ import annotations

import heapq


class SessionClock:
    def __init__(self) -> None:
        self._deadlines: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._deadlines)

    def set(self, sid: str, deadline: float) -> None:
        self._deadlines[sid] = deadline
        heapq.heappush(self._heap, (deadline, sid))
        if len(self._heap) > 2 * len(self._deadlines) + 64:
            self._compact()

    def forget(self, sid: str) -> None:
        self._deadlines.pop(sid, None)

    def deadline(self, sid: str) -> float | None:
        return self._deadlines.get(sid)

    def due(self, now: float) -> list[str]:
        """Remove and return every session whose deadline is ``now`` or earlier."""
        expired = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, sid = heapq.heappop(heap)
            if self._deadlines.get(sid) == deadline:
                del self._deadlines[sid]
                expired.append(sid)
        return expired

    def _compact(self) -> None:
        """Drop stale entries, so sessions that reauthenticate often cannot grow the heap."""
        self._heap = [(deadline, sid) for sid, deadline in self._deadlines.items()]
        heapq.heapify(self._heap)
