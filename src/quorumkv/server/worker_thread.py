"""One named thread that runs blocking calls for an event loop, in the order given.

The Raft driver hands its log writes, applies and snapshot copies to threads
of their own, thousands of times a second. ``run_in_executor`` with a
one-thread ``ThreadPoolExecutor`` costs a concurrent Future, a work item, two
locks and a chained asyncio Future per call, all while holding the GIL that
the loop needs. Here a call is a tuple on a ``SimpleQueue`` and one
``call_soon_threadsafe`` back: the same order and the same exceptions, at a
fraction of the hand-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.cancelled():
        return  # the caller gave up; the call ran all the same
    if ok:
        fut.set_result(value)
    else:
        fut.set_exception(value)


class WorkerThread:
    """Runs each submitted call in one thread, one at a time, in submission order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: SimpleQueue[_Job | None] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` in the thread; its result, or the exception it raised.

        Cancelling the wait does not stop the call: once queued, it runs.
        """
        if self._closed:
            raise RuntimeError(f"the {self.name} thread is shut down")
        if self._thread is None:
            # Started on first use, so a group that never writes owns no thread.
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if kwargs:
            self._jobs.put((loop, fut, lambda: fn(*args, **kwargs), ()))
        else:
            self._jobs.put((loop, fut, fn, args))
        return await fut

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            loop, fut, fn, args = job
            try:
                value, ok = fn(*args), True
            except BaseException as e:  # handed to the waiting coroutine, as an executor does
                value, ok = e, False
            # A closed loop raises RuntimeError: nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, fut, ok, value)
            del job, fut, fn, args, value  # nothing of the call outlives it here

    async def shutdown(self) -> None:
        """Refuse new calls, and wait for the queued and running ones to finish."""
        self._closed = True
        thread = self._thread
        if thread is None:
            return
        self._jobs.put(None)
        await asyncio.to_thread(thread.join)
