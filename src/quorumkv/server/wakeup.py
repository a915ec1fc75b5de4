"""A flag a task sleeps on until it is raised or a deadline passes.

The Raft driver sleeps between ticks until a message, a proposal or a read
arrives, many thousand times a second under load. ``asyncio.wait_for`` on an
``Event`` wraps every sleep in a task of its own; this costs one future and
one timer handle.
"""

from __future__ import annotations

import asyncio


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Wakeup:
    def __init__(self) -> None:
        self._raised = False
        self._sleeper: asyncio.Future[None] | None = None

    def set(self) -> None:
        """Raise the flag: the sleeper (if any) wakes, and the next sleep returns at once."""
        self._raised = True
        if self._sleeper is not None:
            _wake(self._sleeper)

    async def sleep_until(self, deadline: float) -> None:
        """Return once the flag is raised or the loop's clock reaches ``deadline``; the
        flag is lowered on return."""
        if not self._raised:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            timer = loop.call_at(deadline, _wake, fut)
            self._sleeper = fut
            try:
                await fut
            finally:
                self._sleeper = None
                timer.cancel()
        self._raised = False
