"""The built-in load generator behind ``quorumkv bench``.

A run has up to three phases:

1. *prefill* (``get`` only): every key of the key space is written once, in
   batches (a txn without compares), so reads find values;
2. *warm-up* (1 s by default): the workers already run, connections open and
   the leader's caches fill, but nothing is counted;
3. *measure*: for ``duration`` seconds, or until ``requests`` requests.

``clients`` workers (asyncio tasks) each keep one request in flight. They
share AsyncClients, one per ``WORKERS_PER_CONNECTION`` workers, because
each AsyncClient pipelines all its requests on one connection: a handful
of connections carry many concurrent requests, as a real application
would, without a connection per request. In duration mode a request is
counted if it started and finished inside the window, so neither edge
of the window is biased. A failure that retrying cannot cure (a request
error, an unbuilt consistency level) aborts the run rather than being
counted thousands of times; any other error is counted, by code.

The engine shows nothing; :meth:`BenchRun.progress` lets a front end draw.
"""

from __future__ import annotations

import asyncio
import enum
import math
import random
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from quorumkv.client import AsyncClient, Put
from quorumkv.errors import InvalidArgument, NotBuiltYet, QuorumKVError, RequestError
from quorumkv.tools.latency import LatencySummary

WORKERS_PER_CONNECTION = 8
KEY_PREFIX = b"bench/"
PREFILL_BATCH_OPS = 100
"""Puts per prefill txn: below the server's limit of 128 ops per txn branch."""
PREFILL_BATCH_BYTES = 512 << 10
"""Bytes of values per prefill txn: well under the 4 MiB request limit."""
PREFILL_PARALLEL = 8

WORKLOADS = ("put", "get")
PUT_LEVELS = ("one", "quorum", "all")
GET_LEVELS = ("one", "session", "quorum", "all")


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    endpoints: tuple[str, ...]
    workload: str = "put"
    clients: int = 16
    duration: float | None = 10.0
    """Seconds to measure; None when ``requests`` bounds the run instead."""
    requests: int | None = None
    key_size: int = 16
    value_size: int = 128
    keys: int = 1000
    consistency: str = "quorum"
    warmup: float = 1.0
    timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise InvalidArgument(f"unknown workload {self.workload!r}: expected put or get")
        levels = PUT_LEVELS if self.workload == "put" else GET_LEVELS
        if self.consistency not in levels:
            raise InvalidArgument(f"a {self.workload} takes consistency {', '.join(levels)}, "
                                  f"not {self.consistency!r}")
        if (self.duration is None) == (self.requests is None):
            raise InvalidArgument("give either a duration or a number of requests")
        if self.duration is not None and not self.duration > 0:
            raise InvalidArgument("the duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise InvalidArgument("the number of requests must be at least 1")
        if self.clients < 1 or self.keys < 1 or self.value_size < 0 or self.warmup < 0:
            raise InvalidArgument("clients and keys must be at least 1; sizes and warm-up "
                                  "must not be negative")
        need = len(KEY_PREFIX) + len(str(self.keys - 1))
        if self.key_size < need:
            raise InvalidArgument(f"a key size of {self.key_size} cannot hold {self.keys} "
                                  f"distinct keys: it must be at least {need}")

    @property
    def connections(self) -> int:
        return math.ceil(self.clients / WORKERS_PER_CONNECTION)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchReport:
    options: BenchOptions
    ops: int
    """Requests that succeeded inside the measured window."""
    errors: dict[str, int]
    """Failed requests inside the window, by error code."""
    elapsed_s: float
    latency: LatencySummary

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_json(self) -> dict[str, Any]:
        o = self.options
        return {"workload": o.workload, "consistency": o.consistency, "clients": o.clients,
                "connections": o.connections, "key_size": o.key_size,
                "value_size": o.value_size, "keys": o.keys, "warmup_s": o.warmup,
                "elapsed_s": round(self.elapsed_s, 3), "ops": self.ops,
                "ops_per_s": round(self.ops_per_s, 1), "errors": self.error_count,
                "errors_by_code": dict(self.errors), "latency_ms": self.latency.to_json()}


class Phase(enum.Enum):
    PREFILL = "prefill"
    WARMUP = "warm-up"
    MEASURE = "measure"
    DONE = "done"


@dataclass(slots=True)
class _Window:
    """The measured window and what happened in it."""

    start: float | None = None
    end: float | None = None
    slots_left: int | None = None
    """Requests still to be started (requests mode)."""
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


class BenchRun:
    """One benchmark run; :meth:`run` it once."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self.phase = Phase.PREFILL if options.workload == "get" else Phase.WARMUP
        self.prefilled = 0
        self._phase_started = time.perf_counter()
        self._stopping = False
        self._window = _Window(slots_left=options.requests)
        # Any seed will do; the point is not to draw from the process-global Random.
        self._rng = random.Random(secrets.randbits(64))
        width = options.key_size - len(KEY_PREFIX)
        self._keys = [KEY_PREFIX + str(i).zfill(width).encode() for i in range(options.keys)]
        letters = b"abcdefghijklmnopqrstuvwxyz0123456789"
        self._value = bytes(self._rng.choice(letters) for _ in range(options.value_size))

    def progress(self) -> tuple[Phase, float, float]:
        """(phase, done, total): keys for prefill, seconds or requests otherwise."""
        o = self.options
        elapsed = time.perf_counter() - self._phase_started
        if self.phase is Phase.PREFILL:
            return self.phase, float(self.prefilled), float(o.keys)
        if self.phase is Phase.WARMUP:
            return self.phase, min(elapsed, o.warmup), o.warmup
        if o.requests is not None:
            assert self._window.slots_left is not None
            return self.phase, float(o.requests - self._window.slots_left), float(o.requests)
        assert o.duration is not None
        return self.phase, min(elapsed, o.duration), o.duration

    @property
    def measured_ops(self) -> int:
        return len(self._window.latencies)

    async def run(self) -> BenchReport:
        o = self.options
        clients = [AsyncClient(o.endpoints, timeout=o.timeout) for _ in range(o.connections)]
        try:
            if o.workload == "get":
                await self._prefill(clients)
            self._enter(Phase.WARMUP)
            async with asyncio.TaskGroup() as tg:
                for i in range(o.clients):
                    rng = random.Random(self._rng.getrandbits(64))
                    tg.create_task(self._worker(clients[i // WORKERS_PER_CONNECTION], rng))
                tg.create_task(self._control())
            if self._window.end is None:
                # Requests mode: the workers have returned, so the last request has finished.
                self._window.end = time.perf_counter()
        except ExceptionGroup as group:
            # Show the one error that stopped the run, not the task group around it.
            first = _first_quorumkv_error(group)
            if first is None:
                raise
            raise first from None
        finally:
            for c in clients:
                await c.close()
        self._enter(Phase.DONE)
        return self._report()

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        self._phase_started = time.perf_counter()

    async def _prefill(self, clients: list[AsyncClient]) -> None:
        batches: list[list[Put]] = [[]]
        size = 0
        for key in self._keys:
            if len(batches[-1]) >= PREFILL_BATCH_OPS or size >= PREFILL_BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(Put(key=key, value=self._value))
            size += len(key) + len(self._value)
        queue = iter(batches)

        async def writer(client: AsyncClient) -> None:
            for batch in queue:  # the shared iterator hands each batch to one writer
                await client.txn([], batch)
                self.prefilled += len(batch)

        async with asyncio.TaskGroup() as tg:
            for i in range(PREFILL_PARALLEL):
                tg.create_task(writer(clients[i % len(clients)]))

    async def _control(self) -> None:
        await asyncio.sleep(self.options.warmup)
        self._window.start = time.perf_counter()
        self._enter(Phase.MEASURE)
        if self.options.duration is not None:
            await asyncio.sleep(self.options.duration)
            self._window.end = time.perf_counter()
            self._stopping = True

    async def _worker(self, client: AsyncClient, rng: random.Random) -> None:
        operation = self._operation(client)
        w = self._window
        while not self._stopping:
            counted = w.start is not None
            if w.slots_left is not None and counted:
                if w.slots_left == 0:
                    return
                w.slots_left -= 1
            key = self._keys[rng.randrange(len(self._keys))]
            started = time.perf_counter()
            try:
                await operation(key)
            except (RequestError, NotBuiltYet):
                raise  # every request would fail the same way: stop the run
            except QuorumKVError as err:
                if counted and (w.end is None or time.perf_counter() <= w.end):
                    w.errors[err.code] += 1
                continue
            finished = time.perf_counter()
            if counted and (w.end is None or finished <= w.end):
                w.latencies.append(finished - started)

    def _operation(self, client: AsyncClient) -> Callable[[bytes], Awaitable[object]]:
        level = self.options.consistency
        if self.options.workload == "put":
            return lambda key: client.put(key, self._value, consistency=level)
        return lambda key: client.get(key, consistency=level)

    def _report(self) -> BenchReport:
        w = self._window
        assert w.start is not None and w.end is not None
        return BenchReport(options=self.options, ops=len(w.latencies), errors=dict(w.errors),
                           elapsed_s=w.end - w.start, latency=LatencySummary.of(w.latencies))


def _first_quorumkv_error(group: BaseExceptionGroup[Any]) -> QuorumKVError | None:
    for exc in group.exceptions:
        if isinstance(exc, QuorumKVError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_quorumkv_error(exc)
            if found is not None:
                return found
    return None
