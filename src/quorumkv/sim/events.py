"""The virtual clock and event queue of a simulated run."""

from __future__ import annotations

import heapq
from collections.abc import Callable


class EventLoop:
    """Runs callbacks in virtual-time order; ties break by scheduling order (deterministic)."""

    def __init__(self) -> None:
        self.now = 0
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0

    def at(self, time: int, callback: Callable[[], None]) -> None:
        assert time >= self.now, "cannot schedule in the past"
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, callback))

    def after(self, delay: int, callback: Callable[[], None]) -> None:
        self.at(self.now + max(0, delay), callback)

    def run_one(self) -> bool:
        if not self._queue:
            return False
        time, _, callback = heapq.heappop(self._queue)
        self.now = time
        callback()
        return True

    def next_time(self) -> int | None:
        return self._queue[0][0] if self._queue else None
