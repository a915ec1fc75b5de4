"""``--procs P``: a run carried by P load processes that measure one window together.

One Python process cannot drive a cluster much beyond 12-15k requests/s, and
its own event loop becomes part of every latency long before that; several
processes spread the load over the cores. They are started with ``spawn``
(a fresh interpreter, no inherited event loop or sockets) and talk to this
process over a pipe each:

1. a process connects (every connection checked with a read) and sends
   ``{"ready"}``;
2. once all are ready, this process sends each ``{"go": T}``, a wall-clock
   time just ahead; each converts it to its own ``perf_counter`` and starts
   its workers then, so every process has the same warm-up and the same
   measured window, whichever was slowest to start;
3. each sends ``{"result": tally}`` (or ``{"error": ...}``, a quorumkv
   error that stopped it) and exits.

A process gets its options (TLS settings as file paths, from which it builds its
own contexts; the user and password) as the arguments of its entry point, which
``spawn`` pickles to it over a pipe: the password is never on a child's command
line or in its environment.

Counts add up over the shared window, and the latency histograms have the
same fixed buckets in every process, so the merged percentiles are those of
all the samples together (histogram.py). While they run, each process
writes how many operations it has measured into a shared integer, for the
progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from quorumkv import event_loop
from quorumkv.errors import QuorumKVError, from_dict
from quorumkv.tools.bench_engine import Tally
from quorumkv.tools.bench_load import LoadProcess, Share
from quorumkv.tools.bench_options import BenchOptions

GO_DELAY_S = 0.2
"""How far ahead the shared start is set: time for every process to get the message."""
POLL_S = 0.02
PROGRESS_S = 0.1
STOP_TIMEOUT_S = 5.0


class ProcessGroup:
    """Load processes for one run; :meth:`run` it once."""

    def __init__(self, options: BenchOptions, shares: Sequence[Share], seed: int) -> None:
        self.options = options
        self.shares = list(shares)
        self.seed = seed
        self._ctx = multiprocessing.get_context("spawn")
        self._counters: list[Synchronized[int]] = []

    @property
    def measured_ops(self) -> int:
        return sum(c.value for c in self._counters)

    async def run(self, on_go: Callable[[float], None]) -> list[Tally]:
        """``on_go`` gets the shared start as this process's perf_counter time."""
        procs: list[BaseProcess] = []
        pipes: list[Connection] = []
        completed = False
        try:
            for share in self.shares:
                counter: Synchronized[int] = self._ctx.Value("q", 0, lock=False)
                parent_end, child_end = self._ctx.Pipe()
                proc = self._ctx.Process(
                    target=child_main, args=(self.options, share, self.seed, child_end, counter),
                    name=f"quorumkv-bench-{share.index}", daemon=True)
                proc.start()
                child_end.close()  # so the pipe reports EOF if the child dies
                procs.append(proc)
                pipes.append(parent_end)
                self._counters.append(counter)
            await _collect(pipes, procs, "ready")
            go_wall = time.time() + GO_DELAY_S
            for pipe in pipes:
                pipe.send({"go": go_wall})
            on_go(time.perf_counter() + (go_wall - time.time()))
            results = await _collect(pipes, procs, "result")
            completed = True
            return [Tally.from_json(r) for r in results]
        finally:
            # After a result a process is only closing its connections; otherwise (an
            # error elsewhere, an interruption) there is nothing to wait for.
            _stop(procs, grace=STOP_TIMEOUT_S if completed else 0.0)
            for pipe in pipes:
                pipe.close()


async def _collect(pipes: Sequence[Connection], procs: Sequence[BaseProcess],
                   key: str) -> list[Any]:
    """One ``key`` message from every process; a quorumkv error from any is raised."""
    got: dict[int, Any] = {}
    while len(got) < len(pipes):
        for i, (pipe, proc) in enumerate(zip(pipes, procs, strict=True)):
            if i in got:
                continue
            message: dict[str, Any] | None = None
            with contextlib.suppress(EOFError, OSError):
                if pipe.poll():
                    message = pipe.recv()
            if message is None:
                if not proc.is_alive():
                    raise RuntimeError(f"load process {i} exited (code {proc.exitcode}) "
                                       f"before sending its {key}")
                continue
            if "error" in message:
                raise from_dict(message["error"])
            got[i] = message[key]
        await asyncio.sleep(POLL_S)
    return [got[i] for i in range(len(pipes))]


def _stop(procs: Sequence[BaseProcess], *, grace: float) -> None:
    """Each process by its own handle: the ones still running after ``grace`` seconds
    are ended, then reaped."""
    for proc in procs:
        if grace > 0:
            proc.join(timeout=grace)
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=STOP_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


def child_main(options: BenchOptions, share: Share, seed: int, conn: Connection,
               counter: Synchronized[int]) -> None:
    """A load process's entry point (importable, as ``spawn`` requires)."""
    try:
        tally = event_loop.run(_child(options, share, seed, conn, counter))
    except QuorumKVError as err:
        conn.send({"error": err.to_dict()})
        return
    except (KeyboardInterrupt, asyncio.CancelledError):
        return  # interrupted, or the command line's process went away
    conn.send({"result": tally.to_json()})
    conn.close()


async def _child(options: BenchOptions, share: Share, seed: int, conn: Connection,
                 counter: Synchronized[int]) -> Tally:
    load = LoadProcess(options, share, seed)
    loop = asyncio.get_running_loop()

    main = asyncio.current_task()
    assert main is not None

    async def ready() -> float:
        conn.send({"ready": True})
        message: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
        return time.perf_counter() + (float(message["go"]) - time.time())

    async def report_progress() -> None:
        while True:
            counter.value = load.measured_ops
            # Nothing more is sent after "go", so a readable pipe means end of file: the
            # command line's process is gone (killed, say), and no one wants the load.
            if load.window is not None and conn.poll():
                main.cancel()
                return
            await asyncio.sleep(PROGRESS_S)

    reporter = asyncio.create_task(report_progress())
    try:
        return await load.run(ready)
    finally:
        reporter.cancel()
        counter.value = load.measured_ops
