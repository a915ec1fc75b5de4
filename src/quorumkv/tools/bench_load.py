"""One load process of a benchmark: its connections, its workers, its watchers.

A run with ``--procs P`` has P of these (bench_procs.py), each with its
share of the workers; a run with one process runs one in the command's own
event loop. Workers share AsyncClients, ``WORKERS_PER_CONNECTION`` to a
client, because each AsyncClient pipelines all its requests on one
connection: a handful of connections carry many concurrent requests, as a
real application would. Connections start at different members in turn
(a write is redirected to the leader; a read at "one" or "session" is
served where it lands), and every connection is opened and checked with
one read before the run starts, so connecting is not part of the warm-up.

Worker ``i`` (its global index over all processes) draws its keys from a
``random.Random`` seeded with the run's seed and ``i``: a seeded run makes
every worker draw the same keys in the same order, however the workers are
split over processes. (Which request reaches the cluster first still
depends on timing.)
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from quorumkv.client import AsyncClient, Compare, CompareOp, CompareTarget, Put, Watch
from quorumkv.errors import QuorumKVError
from quorumkv.kv.keys import prefix_end
from quorumkv.tools.bench_engine import (
    WRITE_KIND,
    Done,
    Operation,
    Schedule,
    Tally,
    Window,
    drive,
)
from quorumkv.tools.bench_options import (
    WORKERS_PER_CONNECTION,
    BenchOptions,
    split,
    watch_prefix,
)
from quorumkv.tools.keyspace import key_chooser, make_keys, make_value

PREFILL_BATCH_OPS = 100
"""Puts per prefill txn: below the server's limit of 128 ops per txn branch."""
PREFILL_BATCH_BYTES = 512 << 10
"""Bytes of values per prefill txn: well under the 4 MiB request limit."""
PREFILL_PARALLEL = 8

_STAMP = struct.Struct("<d")
_PUT, _GET, _RANGE = Done("put"), Done("get"), Done("range")
_TXN, _TXN_CONFLICT, _WRITE = Done("txn"), Done("txn", conflict=True), Done(WRITE_KIND)


@dataclass(frozen=True, slots=True, kw_only=True)
class Share:
    """One process's part of the run."""

    index: int
    clients: int
    first_client: int
    """Global index of this process's first worker: seeds and member spreading use it."""
    watchers: int
    first_connection: int
    requests: int | None


def shares(options: BenchOptions) -> list[Share]:
    out: list[Share] = []
    requests = (split(options.requests, options.procs) if options.requests is not None
                else [(0, 0)] * options.procs)
    watchers = split(options.watcher_count, options.procs)
    connection = 0
    for i, (clients, first) in enumerate(split(options.clients, options.procs)):
        out.append(Share(index=i, clients=clients, first_client=first,
                         watchers=watchers[i][0], first_connection=connection,
                         requests=requests[i][0] if options.requests is not None else None))
        connection += _connections(clients) + _connections(watchers[i][0])
    return out


def _connections(workers: int) -> int:
    return math.ceil(workers / WORKERS_PER_CONNECTION)


def rotated(endpoints: Sequence[str], by: int) -> tuple[str, ...]:
    k = by % len(endpoints)
    return (*endpoints[k:], *endpoints[:k])


def run_value(options: BenchOptions, seed: int) -> bytes:
    return make_value(options.value_size, random.Random(f"{seed}/value"))


def connect(options: BenchOptions, endpoints: Sequence[str], *,
            timeout: float | None = None) -> AsyncClient:
    """A client of the run: its TLS settings and credentials, ``options.timeout`` unless
    another is given."""
    return AsyncClient(endpoints, timeout=options.timeout if timeout is None else timeout,
                       tls=options.tls, user=options.user, password=options.password)


def worker_rng(seed: int, worker: int) -> random.Random:
    # A string seed is hashed with SHA-512: the same on every run and platform.
    return random.Random(f"{seed}/worker/{worker}")


async def prefill(options: BenchOptions, value: bytes,
                  progress: Callable[[int], None]) -> None:
    """Write every key once, in batches (a txn without compares), so reads find values."""
    keys = make_keys(options.key_prefix, options.keys, options.key_size)
    batches: list[list[Put]] = [[]]
    size = 0
    for key in keys:
        if len(batches[-1]) >= PREFILL_BATCH_OPS or size >= PREFILL_BATCH_BYTES:
            batches.append([])
            size = 0
        batches[-1].append(Put(key=key, value=value))
        size += len(key) + len(value)
    queue = iter(batches)
    clients = [connect(options, rotated(options.endpoints, i))
               for i in range(min(PREFILL_PARALLEL, len(options.endpoints)))]

    async def writer(client: AsyncClient) -> None:
        for batch in queue:  # the shared iterator hands each batch to one writer
            await client.txn([], batch)
            progress(len(batch))

    try:
        async with asyncio.TaskGroup() as tg:
            for i in range(PREFILL_PARALLEL):
                tg.create_task(writer(clients[i % len(clients)]))
    except ExceptionGroup as group:
        raise_first(group)
    finally:
        for c in clients:
            await c.close()


class LoadProcess:
    """The part of a run one process carries; :meth:`run` it once."""

    def __init__(self, options: BenchOptions, share: Share, seed: int) -> None:
        self.options = options
        self.share = share
        self.seed = seed
        self.window: Window | None = None
        o = options
        self._value = run_value(o, seed)
        self._prefix = (watch_prefix(o.key_prefix, share.index) if o.workload == "watch"
                        else o.key_prefix)
        self._keys = [] if o.fresh_keys else make_keys(self._prefix, o.keys, o.key_size)
        self._chooser = key_chooser(o.key_dist, o.keys, o.zipf_s)

    @property
    def measured_ops(self) -> int:
        return self.window.tally.ops if self.window is not None else 0

    async def run(self, ready: Callable[[], Awaitable[float]]) -> Tally:
        """Connect, then ``ready()`` (which returns the shared start, a perf_counter
        time), then load until the window closes."""
        o, share = self.options, self.share
        n_workers, n_watchers = _connections(share.clients), _connections(share.watchers)
        clients = [connect(o, rotated(o.endpoints, share.first_connection + i))
                   for i in range(n_workers + n_watchers)]
        watches: list[Watch] = []
        watchers: list[asyncio.Task[None]] = []
        try:
            await asyncio.gather(*(c.get(o.key_prefix, consistency="one") for c in clients))
            for i in range(share.watchers):
                client = clients[n_workers + i // WORKERS_PER_CONNECTION]
                watches.append(client.watch(self._prefix, prefix=True))
            await asyncio.gather(*(w.wait_created() for w in watches))
            go = await ready()
            start = go + o.warmup
            window = Window(start=start, end=None if o.duration is None else start + o.duration,
                            drain=o.drain, slots_left=share.requests)
            window.tally.connections = len(clients)
            self.window = window
            schedule = self._schedule(go)
            for i, w in enumerate(watches):
                client = clients[n_workers + i // WORKERS_PER_CONNECTION]
                watchers.append(asyncio.create_task(self._watcher(w, client, window)))
            async with asyncio.TaskGroup() as tg:
                for i in range(share.clients):
                    rng = worker_rng(self.seed, share.first_client + i)
                    op = self._operation(clients[i // WORKERS_PER_CONNECTION], rng)
                    tg.create_task(drive(op, window, schedule=schedule))
            window.close(schedule)
            return window.tally
        except ExceptionGroup as group:
            raise_first(group)
        finally:
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            for w in watches:
                await w.cancel()
            for c in clients:
                await c.close()

    def _schedule(self, go: float) -> Schedule | None:
        o = self.options
        if o.rate is None:
            return None
        # This process's part of the rate, in proportion to its workers; processes are
        # staggered by one global interval so their due times interleave.
        rate = o.rate * self.share.clients / o.clients
        return Schedule(go + self.share.index / o.rate, 1.0 / rate, catch_up=o.catch_up)

    def _operation(self, client: AsyncClient, rng: random.Random) -> Operation:
        o = self.options
        level = o.consistency
        value, keys, index = self._value, self._keys, self._chooser.index

        if o.fresh_keys:
            prefix = self._prefix
            pad = b"0" * (o.key_size - len(prefix) - 16)

            async def fresh_put() -> Done:
                key = prefix + b"%016x" % rng.getrandbits(64) + pad
                await client.put(key, value, consistency=level)
                return _PUT
            return fresh_put

        async def put() -> Done:
            await client.put(keys[index(rng)], value, consistency=level)
            return _PUT

        async def get() -> Done:
            await client.get(keys[index(rng)], consistency=level)
            return _GET

        if o.workload == "put":
            return put
        if o.workload == "get":
            return get
        if o.workload == "mixed":
            ratio = o.read_ratio

            async def mixed() -> Done:
                return await (get() if rng.random() < ratio else put())
            return mixed
        if o.workload == "txn":
            return self._cas(client, rng)
        if o.workload == "range":
            end, limit = prefix_end(self._prefix), o.range_limit

            async def scan() -> Done:
                await client.range(keys[index(rng)], end, limit=limit, consistency=level)
                return _RANGE
            return scan
        assert o.workload == "watch"
        tail, clock = value[_STAMP.size:], time.perf_counter

        async def write() -> Done:
            stamped = _STAMP.pack(clock()) + tail
            await client.put(keys[index(rng)], stamped, consistency=level)
            return _WRITE
        return write

    def _cas(self, client: AsyncClient, rng: random.Random) -> Operation:
        """Compare-and-swap: read the key's mod_revision, then put only if it is unchanged.

        One operation is the pair, timed together, as a client sees a CAS. A
        compare that fails (another worker wrote the key in between) is a
        conflict: an answered request, counted apart, not an error.
        """
        read_level = self.options.consistency
        write_level = "all" if read_level == "all" else "quorum"
        value, keys, index = self._value, self._keys, self._chooser.index

        async def cas() -> Done:
            key = keys[index(rng)]
            kv = await client.get(key, consistency=read_level)
            seen = kv.mod_revision if kv is not None else 0  # a missing key compares as 0
            result = await client.txn(
                [Compare(key=key, target=CompareTarget.MOD_REVISION, op=CompareOp.EQUAL,
                         value=seen)],
                [Put(key=key, value=value)], consistency=write_level)
            return _TXN if result.succeeded else _TXN_CONFLICT
        return cas

    async def _watcher(self, watch: Watch, client: AsyncClient, window: Window) -> None:
        """Time every event from its send (stamped in the value) to its arrival here."""
        clock, unpack, size = time.perf_counter, _STAMP.unpack_from, _STAMP.size
        try:
            while True:
                try:
                    async for batch in watch:
                        received = clock()
                        for event in batch.events:
                            if len(event.kv.value) >= size:
                                window.delivered(unpack(event.kv.value)[0], received)
                    return
                except QuorumKVError as err:
                    # A watcher that fell too far behind is cancelled by the node: count
                    # it, and watch again from now so the run goes on.
                    now = clock()
                    if now >= window.start:
                        window.failed(now, err.code)
                    await watch.cancel()
                    watch = client.watch(self._prefix, prefix=True)
        finally:
            await watch.cancel()


def raise_first(group: BaseExceptionGroup[Any]) -> NoReturn:
    """Show the one error that stopped the run, not the task group around it."""
    first = _first_quorumkv_error(group)
    if first is None:
        raise group
    raise first from None


def _first_quorumkv_error(group: BaseExceptionGroup[Any]) -> QuorumKVError | None:
    for exc in group.exceptions:
        if isinstance(exc, QuorumKVError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_quorumkv_error(exc)
            if found is not None:
                return found
    return None
