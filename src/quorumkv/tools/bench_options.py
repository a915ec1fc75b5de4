"""What a benchmark run is asked to do, checked once, before anything connects."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from quorumkv.errors import InvalidArgument
from quorumkv.security.tls import TLSSettings
from quorumkv.tools.keyspace import KEY_DISTRIBUTIONS, min_key_size

WORKERS_PER_CONNECTION = 8
KEY_PREFIX = b"bench/"

WORKLOADS = ("put", "get", "mixed", "txn", "range", "watch")
PUT_LEVELS = ("one", "quorum", "all")
GET_LEVELS = ("one", "session", "quorum", "all")
LEVELS = {"put": PUT_LEVELS, "get": GET_LEVELS, "mixed": GET_LEVELS, "txn": GET_LEVELS,
          "range": GET_LEVELS, "watch": PUT_LEVELS}
"""A txn's read takes any read level (a stale read only makes more conflicts); its
write is at quorum, or all when asked, since a txn's outcome is known only once applied.
Mixed writes take the same level ("session" writes are quorum writes)."""
PREFILLED = frozenset({"get", "mixed", "txn", "range"})
"""Workloads that read: every key is written once first, so reads find values."""
WATCH_STAMP_SIZE = 8
"""A watch workload's value starts with its send time (a little-endian double)."""


def split(total: int, parts: int) -> list[tuple[int, int]]:
    """``total`` workers over ``parts`` processes: (count, global index of the first)."""
    base, extra = divmod(total, parts)
    out: list[tuple[int, int]] = []
    offset = 0
    for i in range(parts):
        count = base + (1 if i < extra else 0)
        out.append((count, offset))
        offset += count
    return out


def watch_prefix(prefix: bytes, proc: int) -> bytes:
    """Each load process writes and watches its own keys, so a delivery's send time
    was read from the receiving process's own clock. A sibling of ``prefix`` (bench/ ->
    bench-w0/), not inside it: range scans of the key space must not run into them."""
    return prefix.rstrip(b"/") + b"-w" + str(proc).encode() + b"/"


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchOptions:
    endpoints: tuple[str, ...]
    workload: str = "put"
    clients: int = 16
    """Workers: each keeps one request in flight (closed loop) or serves due times (open)."""
    duration: float | None = 10.0
    """Seconds to measure; None when ``requests`` bounds the run instead."""
    requests: int | None = None
    key_size: int = 16
    value_size: int = 128
    keys: int = 1000
    consistency: str = "quorum"
    warmup: float = 1.0
    timeout: float = 5.0
    read_ratio: float = 0.9
    """mixed: the share of requests that are gets."""
    range_limit: int = 10
    """range: keys per scan."""
    watchers: int = 4
    """watch: watches on the written prefix (each gets every event)."""
    key_dist: str = "uniform"
    zipf_s: float = 0.99
    rate: float | None = None
    """Open loop at this many requests per second (all processes together)."""
    procs: int = 1
    seed: int | None = None
    """None: a random seed, reported with the results so the run can be repeated."""
    tls: TLSSettings | None = None
    """How to speak TLS to the nodes (file paths only, so the options pickle to the load
    processes, which build their own contexts)."""
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    """With ``user``: whom every connection signs in as. It reaches a load process with
    the rest of the options, pickled over spawn's pipe: never on a command line or in an
    environment."""
    # Not on bench's command line: what `check perf` changes.
    key_prefix: bytes = KEY_PREFIX
    fresh_keys: bool = False
    """Every put a new random key under ``key_prefix`` (``key_size`` bytes in all)."""
    catch_up: bool = True
    """Open loop: send late requests and measure from their due time (see bench_engine)."""
    drain: bool = False
    """Count every request sent inside the window, however late it finishes."""

    def __post_init__(self) -> None:
        if self.workload not in WORKLOADS:
            raise InvalidArgument(f"unknown workload {self.workload!r}: expected "
                                  f"{', '.join(WORKLOADS)}")
        levels = LEVELS[self.workload]
        if self.consistency not in levels:
            raise InvalidArgument(f"a {self.workload} takes consistency {', '.join(levels)}, "
                                  f"not {self.consistency!r}")
        if (self.duration is None) == (self.requests is None):
            raise InvalidArgument("give either a duration or a number of requests")
        if self.duration is not None and not self.duration > 0:
            raise InvalidArgument("the duration must be positive")
        if self.requests is not None and self.requests < 1:
            raise InvalidArgument("the number of requests must be at least 1")
        if (self.user is None) != (self.password is None):
            raise InvalidArgument("give both user and password, or neither")
        if self.clients < 1 or self.keys < 1 or self.value_size < 0 or self.warmup < 0:
            raise InvalidArgument("clients and keys must be at least 1; sizes and warm-up "
                                  "must not be negative")
        self._check_shape()
        if self.fresh_keys:
            if self.key_size < len(self.key_prefix) + 16:
                raise InvalidArgument("fresh keys need 16 bytes after the prefix")
        else:
            need = min_key_size(self._widest_prefix(), self.keys)
            if self.key_size < need:
                raise InvalidArgument(f"a key size of {self.key_size} cannot hold {self.keys} "
                                      f"distinct keys: it must be at least {need}")

    def _check_shape(self) -> None:
        if not 0.0 <= self.read_ratio <= 1.0:
            raise InvalidArgument("the read ratio is a fraction between 0 and 1")
        if self.range_limit < 1:
            raise InvalidArgument("a range scan reads at least 1 key")
        if self.key_dist not in KEY_DISTRIBUTIONS:
            raise InvalidArgument(f"unknown key distribution {self.key_dist!r}: expected "
                                  f"{' or '.join(KEY_DISTRIBUTIONS)}")
        if not (self.zipf_s > 0 and math.isfinite(self.zipf_s)):
            raise InvalidArgument("the Zipf exponent must be positive")
        if self.rate is not None and not (self.rate > 0 and math.isfinite(self.rate)):
            raise InvalidArgument("the rate must be a positive number of requests per second")
        if self.procs < 1:
            raise InvalidArgument("at least one load process")
        if self.procs > self.clients:
            raise InvalidArgument(f"{self.procs} load processes need at least as many "
                                  f"clients, not {self.clients}")
        if self.workload == "watch":
            if self.requests is not None:
                raise InvalidArgument("watch measures deliveries over a duration, "
                                      "not a number of requests")
            if self.watchers < self.procs:
                raise InvalidArgument("watch needs at least one watcher per load process")
            if self.value_size < WATCH_STAMP_SIZE:
                raise InvalidArgument(f"a watch value carries its send time: the value size "
                                      f"must be at least {WATCH_STAMP_SIZE}")

    def _widest_prefix(self) -> bytes:
        if self.workload == "watch":
            return watch_prefix(self.key_prefix, self.procs - 1)
        return self.key_prefix

    @property
    def prefilled(self) -> bool:
        return self.workload in PREFILLED and not self.fresh_keys

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def watcher_count(self) -> int:
        return self.watchers if self.workload == "watch" else 0

    @property
    def connections(self) -> int:
        """Connections over all processes: one per WORKERS_PER_CONNECTION workers (and
        watchers, on connections of their own) of each process."""
        total = sum(math.ceil(n / WORKERS_PER_CONNECTION) for n, _ in split(self.clients,
                                                                            self.procs))
        if self.watcher_count:
            total += sum(math.ceil(n / WORKERS_PER_CONNECTION)
                         for n, _ in split(self.watcher_count, self.procs))
        return total
