"""The Raft driver's thread hand-off and its sleep (server/worker_thread.py, wakeup.py)."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from quorumkv.server.wakeup import Wakeup
from quorumkv.server.worker_thread import WorkerThread

EARLY = 0.001
"""A loop runs a timer once its clock is within its resolution of the deadline, so a
sleep may end a hair before it: how much a deadline check allows for that."""


def in_loop(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """The coroutine test ``fn``, run to its end in a fresh event loop."""
    @functools.wraps(fn)
    def run() -> None:
        asyncio.run(fn())
    return run


@in_loop
async def test_calls_run_in_one_thread_in_order_and_return_their_results() -> None:
    worker = WorkerThread("t-order")
    seen: list[tuple[int, str]] = []

    def job(i: int, *, tag: str) -> int:
        seen.append((i, threading.current_thread().name))
        time.sleep(0.001 * (5 - i))  # later calls are quicker: order is not by luck
        return i * 10

    results = await asyncio.gather(*(worker.call(job, i, tag="x") for i in range(5)))
    await worker.shutdown()
    assert results == [0, 10, 20, 30, 40]
    assert [i for i, _ in seen] == [0, 1, 2, 3, 4]
    assert {name for _, name in seen} == {"t-order"}


@in_loop
async def test_an_exception_reaches_the_caller_and_the_thread_goes_on() -> None:
    worker = WorkerThread("t-error")

    def fail() -> None:
        raise OSError(5, "disk on fire")

    with pytest.raises(OSError, match="disk on fire"):
        await worker.call(fail)
    assert await worker.call(lambda: "still here") == "still here"
    await worker.shutdown()


@in_loop
async def test_shutdown_waits_for_queued_calls_and_refuses_new_ones() -> None:
    worker = WorkerThread("t-shutdown")
    done: list[int] = []
    release = threading.Event()

    def slow(i: int) -> None:
        release.wait(5)
        done.append(i)

    pending = [asyncio.ensure_future(worker.call(slow, i)) for i in range(3)]
    await asyncio.sleep(0)  # queued
    closing = asyncio.ensure_future(worker.shutdown())
    await asyncio.sleep(0.05)
    assert not closing.done()  # the queued calls have not run yet
    release.set()
    await closing
    assert done == [0, 1, 2]
    await asyncio.gather(*pending)
    with pytest.raises(RuntimeError, match="shut down"):
        await worker.call(lambda: None)


@in_loop
async def test_a_cancelled_wait_leaves_the_call_to_finish() -> None:
    worker = WorkerThread("t-cancel")
    ran = threading.Event()
    started = threading.Event()

    def job() -> None:
        started.set()
        time.sleep(0.05)
        ran.set()

    task = asyncio.ensure_future(worker.call(job))
    await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await worker.shutdown()
    assert ran.is_set()


@in_loop
async def test_wakeup_returns_at_the_deadline_without_a_set() -> None:
    loop = asyncio.get_running_loop()
    w = Wakeup()
    start = loop.time()
    await w.sleep_until(start + 0.05)
    assert loop.time() >= start + 0.05 - EARLY


@in_loop
async def test_wakeup_set_before_the_sleep_returns_at_once_and_is_lowered() -> None:
    loop = asyncio.get_running_loop()
    w = Wakeup()
    w.set()
    w.set()  # raised twice is raised once
    await asyncio.wait_for(w.sleep_until(loop.time() + 60), 5)
    # Lowered on return: the next sleep waits for its deadline.
    start = loop.time()
    await w.sleep_until(start + 0.05)
    assert loop.time() >= start + 0.05 - EARLY


@in_loop
async def test_wakeup_set_during_the_sleep_wakes_it() -> None:
    loop = asyncio.get_running_loop()
    w = Wakeup()
    sleeper = asyncio.ensure_future(w.sleep_until(loop.time() + 60))
    await asyncio.sleep(0.01)
    assert not sleeper.done()
    w.set()
    await asyncio.wait_for(sleeper, 5)
