"""One adapter per system: the same three operations on each system's own client.

Each adapter module has ``connect(endpoint, endpoints, timeout)``, returning
a :class:`Connection` that starts at ``endpoint`` (one cluster member) and
may use the other ``endpoints`` the way that system's client normally does.
A connection is shared by several concurrent workers, as applications share
a client, so every method must allow concurrent calls.

An operation returns once the system says it is done and raises on any
failure; the load generator counts the exception by its type.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

SYSTEMS = ("quorumkv", "etcd", "pysyncobj")


class Connection(Protocol):
    async def put(self, key: bytes, value: bytes) -> None:
        """A write acknowledged once committed by a majority."""

    async def get(self, key: bytes) -> None:
        """A linearizable read (for PySyncObj, the only one it has: through the log)."""

    async def get_one(self, key: bytes) -> None:
        """A read served by the member itself: etcd's serializable, quorumkv's 'one'."""

    async def close(self) -> None: ...


Connect = Callable[[str, Sequence[str], float], Awaitable[Connection]]


def load(system: str) -> Connect:
    """The adapter's connect function, imported only now: each needs its own client library."""
    if system not in SYSTEMS:
        raise ValueError(f"no adapter for {system!r}; expected one of {', '.join(SYSTEMS)}")
    module = importlib.import_module(f"bench.compare.adapters.{system}_adapter")
    connect: Connect = module.connect
    return connect
