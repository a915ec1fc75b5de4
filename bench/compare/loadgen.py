"""The closed-loop load generator: one process, one system, one measurement.

    python -m bench.compare.loadgen --system etcd --endpoints H:P,H:P,H:P \
        --workload put --workers 16 [--worker-offset 0] [--keys 1000]

``run.py`` starts one or more of these per measurement, under the
interpreter that has the system's client, and talks to them over stdin and
stdout, one JSON object per line:

1. the process opens its connections, checks each with a read, and prints
   ``{"ready": ...}``;
2. it reads ``{"measure_at": T0, "end_at": T1}`` (wall-clock seconds), and
   its workers start at once: everything before T0 is warm-up;
3. a request counts if it started at or after T0 and finished by T1, so
   neither edge of the window is biased by requests that straddle it (the
   same rule as ``quorumkv bench``); at T1 the workers stop issuing, the
   requests in flight finish, and the process prints ``{"result": ...}``
   (see histogram.Measurement: counts, latency histogram, errors, and the
   CPU time the process used inside the window) and exits.

Giving every process the same wall-clock window, after all of them are
connected, is what lets their counts be added: a process that was slow to
start does not shift or shorten the window of the others.

Workers are spread over the members round robin by their global index
(``--worker-offset`` + local index), so a measurement split over several
processes still spreads evenly; each member's workers share connections,
``WORKERS_PER_CONNECTION`` to a connection, as an application shares a
client (each adapter pipelines or multiplexes requests on a connection).

``--prefill`` instead waits until a write succeeds through every member (the
cluster is up and has a leader) and then writes every key once, so reads
find values; it prints ``{"prefilled": N}``.

Each request is a uniformly chosen key (``--key-size`` bytes, default 16)
and, for puts, one fixed random value (``--value-size`` bytes, default 128).
Standard library only, apart from the adapter's client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from bench.compare.adapters import SYSTEMS, Connect, Connection, load
from bench.compare.histogram import Histogram, Measurement

T = TypeVar("T")
WORKLOADS = ("put", "get", "get-one")
WORKERS_PER_CONNECTION = 8
KEY_PREFIX = b"bench/"
PREFILL_WORKERS = 32
ERROR_PAUSE_S = 0.01
"""After a failed request a worker waits this long: a member that refuses at
once would otherwise be hammered in a tight loop, counting thousands of errors
a second and starving the other workers of CPU."""


def make_keys(count: int, size: int) -> list[bytes]:
    width = size - len(KEY_PREFIX)
    if width < len(str(count - 1)):
        raise ValueError(f"{size}-byte keys cannot hold {count} distinct keys")
    return [KEY_PREFIX + str(i).zfill(width).encode() for i in range(count)]


def make_value(size: int, rng: random.Random) -> bytes:
    letters = b"abcdefghijklmnopqrstuvwxyz0123456789"
    return bytes(rng.choice(letters) for _ in range(size))


def operation(conn: Connection, workload: str,
              value: bytes) -> Callable[[bytes], Awaitable[None]]:
    if workload == "put":
        return lambda key: conn.put(key, value)
    if workload == "get":
        return conn.get
    if workload == "get-one":
        return conn.get_one
    raise ValueError(f"unknown workload {workload!r}")


def assign(workers: int, offset: int, members: int) -> list[int]:
    """Each local worker's member, round robin by global index."""
    return [(offset + i) % members for i in range(workers)]


@dataclass(slots=True)
class Window:
    measure_at: float
    """perf_counter() values, converted from the coordinator's wall-clock times."""
    end_at: float
    ops: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    histogram: Histogram = field(default_factory=Histogram)


async def open_connections(connect: Connect, endpoints: Sequence[str], members: list[int],
                           timeout: float) -> list[Connection]:
    """One connection per WORKERS_PER_CONNECTION workers of a member; worker i gets conns[i]."""
    per_member: dict[int, list[Connection]] = {}
    seen: Counter[int] = Counter()
    conns: list[Connection] = []
    for member in members:
        slot = seen[member] // WORKERS_PER_CONNECTION
        seen[member] += 1
        pool = per_member.setdefault(member, [])
        if slot == len(pool):
            pool.append(await connect(endpoints[member], endpoints, timeout))
        conns.append(pool[slot])
    return conns


async def probe(conns: Sequence[Connection], key: bytes, deadline_s: float) -> None:
    """A read on each connection, so that connecting is not part of the warm-up."""
    deadline = time.monotonic() + deadline_s
    for conn in dict.fromkeys(conns):  # each shared connection once
        while True:
            try:
                await conn.get_one(key)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def worker(conn: Connection, workload: str, value: bytes, keys: Sequence[bytes],
                 rng: random.Random, window: Window) -> None:
    op = operation(conn, workload, value)
    measure_at, end_at = window.measure_at, window.end_at
    clock = time.perf_counter
    while True:
        started = clock()
        if started >= end_at:
            return
        key = keys[rng.randrange(len(keys))]
        try:
            await op(key)
        except Exception as err:  # counted, whatever the client raises
            finished = clock()
            if started >= measure_at and finished <= end_at:
                window.errors[type(err).__name__] += 1
            await asyncio.sleep(ERROR_PAUSE_S)
            continue
        finished = clock()
        if started >= measure_at and finished <= end_at:
            window.ops += 1
            window.histogram.record(finished - started)


async def cpu_clock(window: Window, readings: list[float]) -> None:
    """CPU time at the window's edges, read beside the workers rather than by them:
    the whole process's cost (event loop, client library, encoding) in the window."""
    for edge in (window.measure_at, window.end_at):
        await asyncio.sleep(max(edge - time.perf_counter(), 0.0))
        readings.append(time.process_time())


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_control() -> dict[str, Any]:
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("the coordinator went away before the start signal")
    control: dict[str, Any] = json.loads(line)
    return control


async def measure(args: argparse.Namespace, connect: Connect, endpoints: list[str]) -> None:
    keys = make_keys(args.keys, args.key_size)
    rng = random.Random()
    value = make_value(args.value_size, rng)
    members = assign(args.workers, args.worker_offset, len(endpoints))
    conns = await open_connections(connect, endpoints, members, args.timeout)
    try:
        await probe(conns, keys[0], args.timeout)
        emit({"ready": True, "workers": args.workers, "connections": len(set(map(id, conns)))})
        control = await read_control()
        # Wall clock to this process's perf_counter: the window is shared by processes.
        offset = time.perf_counter() - time.time()
        window = Window(measure_at=control["measure_at"] + offset,
                        end_at=control["end_at"] + offset)
        cpu: list[float] = []
        async with asyncio.TaskGroup() as tg:
            for conn in conns:  # one entry per worker; workers share connections
                tg.create_task(worker(conn, args.workload, value, keys,
                                      random.Random(rng.getrandbits(64)), window))
            tg.create_task(cpu_clock(window, cpu))
    finally:
        for conn in dict.fromkeys(conns):
            await conn.close()
    result = Measurement(ops=window.ops, errors=window.errors,
                         window_s=window.end_at - window.measure_at, workers=args.workers,
                         histogram=window.histogram,
                         client_cpu_s=cpu[1] - cpu[0] if len(cpu) == 2 else 0.0)
    emit({"result": result.to_json()})


async def retry_until(deadline: float, attempt: Callable[[], Awaitable[T]]) -> T:
    while True:
        try:
            return await attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def prefill(args: argparse.Namespace, connect: Connect, endpoints: list[str]) -> None:
    keys = make_keys(args.keys, args.key_size)
    value = make_value(args.value_size, random.Random())
    deadline = time.monotonic() + args.ready_timeout
    conns: list[Connection] = []
    try:
        # Through every member, so a member that is still starting (its port not
        # bound yet, or no leader known) delays the start instead of failing requests.
        for endpoint in endpoints:
            conn = await retry_until(deadline, partial(connect, endpoint, endpoints,
                                                       args.timeout))
            conns.append(conn)
            await retry_until(deadline, partial(conn.put, keys[0], value))
        todo = iter(keys)

        async def writer(conn: Connection) -> None:
            for key in todo:  # the shared iterator hands each key to one writer
                await conn.put(key, value)

        async with asyncio.TaskGroup() as tg:
            for i in range(PREFILL_WORKERS):
                tg.create_task(writer(conns[i % len(conns)]))
    finally:
        for conn in conns:
            await conn.close()
    emit({"prefilled": len(keys)})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="One load process of bench/compare.")
    parser.add_argument("--system", choices=SYSTEMS, required=True)
    parser.add_argument("--endpoints", required=True, help="client HOST:PORT of each member")
    parser.add_argument("--workload", choices=WORKLOADS, default="put")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--worker-offset", type=int, default=0)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--key-size", type=int, default=16)
    parser.add_argument("--value-size", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds before one request counts as failed")
    parser.add_argument("--prefill", action="store_true",
                        help="wait for the cluster, write every key once, and exit")
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.workers < 1 or args.keys < 1:
        parser.error("--workers and --keys must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    connect = load(args.system)
    endpoints = [e for e in args.endpoints.split(",") if e]
    if not endpoints:
        raise SystemExit("no endpoints")
    asyncio.run(prefill(args, connect, endpoints) if args.prefill
                else measure(args, connect, endpoints))


if __name__ == "__main__":
    main()
