"""A faulty network between simulated nodes: loss, duplication, delay, reordering, partitions."""

from __future__ import annotations

import random
from collections.abc import Callable

from quorumkv.sim.events import EventLoop
from quorumkv.sim.options import SimOptions


class SimNetwork:
    def __init__(self, loop: EventLoop, options: SimOptions, rng: random.Random) -> None:
        self._loop = loop
        self._opt = options
        self._rng = rng
        self.blocked: set[tuple[int, int]] = set()
        """Directed links that drop everything (src, dst): partitions, symmetric or not."""
        self.faults_on = True
        self.sent = 0
        self.dropped = 0

    def heal(self) -> None:
        self.blocked.clear()

    def reachable(self, src: int, dst: int) -> bool:
        return (src, dst) not in self.blocked

    def deliver(self, src: int, dst: int, deliver: Callable[[], None],
                on_lost: Callable[[], None] | None = None) -> None:
        """Schedule ``deliver`` after a random delay, unless the network eats the message."""
        self.sent += 1
        r = self._rng
        lost = not self.reachable(src, dst) or (self.faults_on and r.random() < self._opt.drop_rate)
        if lost:
            self.dropped += 1
            if on_lost is not None:
                # The sender's transport notices a broken stream only after a while.
                self._loop.after(self._delay() * 3 + 20, on_lost)
            return
        copies = 2 if self.faults_on and r.random() < self._opt.duplicate_rate else 1
        for _ in range(copies):
            self._loop.after(self._delay(), deliver)

    def _delay(self) -> int:
        r = self._rng
        if self.faults_on and r.random() < self._opt.slow_rate:
            return r.randint(self._opt.max_delay_ms, self._opt.slow_max_ms)
        return r.randint(self._opt.min_delay_ms, self._opt.max_delay_ms)
