"""The benchmark's measuring core: pacing, the measured window, what a process tallies.

Nothing here opens a socket: a worker is handed an operation (an async
function that makes one request and says what it was), a :class:`Window`
and, for an open loop, a :class:`Schedule`; the clock and the sleep are
parameters, so the rules can be tested with a fake clock.

**Closed loop** (no schedule): each worker sends its next request as soon as
the previous one is answered. A request's latency runs from its send.

**Open loop** (a schedule at a target rate): requests are due at fixed
times, ``interval`` apart, and whichever worker is free takes the next due
time. When every worker is busy, due times pass unserved; with
``catch_up`` (``quorumkv bench --rate``) the backlog is sent as soon as
workers free up and each request's latency runs from its *due* time, not
from when it was finally sent. That is wrk2's correction for coordinated
omission: a closed-loop generator (or a paced one that measures from the
send) stops asking while the system stalls, so the stall hides in a handful
of slow samples instead of showing in every request that a real client
would have sent meanwhile. Without ``catch_up`` (``quorumkv check perf``,
as etcdctl's token bucket of burst 1 behaves) a late slot is simply moved
to when a worker is free: the rate drops instead, and latency runs from
the send.

**The window**: a request counts if its origin (send, or due time) is at
or after ``start`` and it finished by ``end``, so neither edge is biased by
requests that straddle it. Workers stop sending at ``end``. With ``drain``
every request sent inside the window counts however late it finishes (etcd's
rule for check perf: all requests of the run are in its statistics). With
no ``end`` (a number of requests), ``slots_left`` bounds the run instead.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from quorumkv.errors import NotBuiltYet, QuorumKVError, RequestError
from quorumkv.tools.histogram import Histogram

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

ERROR_PAUSE_S = 0.01
"""A closed-loop worker waits this long after a failure: a node that refuses at once
would otherwise be asked again in a tight loop, starving the other workers of CPU."""

WRITE_KIND = "write"
"""The watch workload's writers: tallied apart, since its operations are the deliveries."""


@dataclass(frozen=True, slots=True)
class Done:
    """How a request ended well: which kind it was, and (txn) whether its compare failed."""

    kind: str
    conflict: bool = False


Operation = Callable[[], Awaitable[Done]]


class Schedule:
    """The due times of an open loop, shared by the workers of one process."""

    __slots__ = ("_k", "_next", "catch_up", "first", "interval")

    def __init__(self, first: float, interval: float, *, catch_up: bool) -> None:
        if not interval > 0:
            raise ValueError("a schedule needs a positive interval")
        self.first = first
        self.interval = interval
        self.catch_up = catch_up
        self._k = 0
        self._next = first

    def take(self, now: float) -> float:
        """The next due time (it may be past: the request is late), now owned by the caller."""
        if self.catch_up:
            # From a counter, not by adding intervals: no drift over a long run.
            due = self.first + self._k * self.interval
            self._k += 1
            return due
        due = max(self._next, now)
        self._next = due + self.interval
        return due

    def slots_between(self, start: float, end: float) -> int:
        """How many due times fall in ``[start, end)`` (catch-up schedules)."""
        first_k = max(0, math.ceil((start - self.first) / self.interval))
        end_k = max(0, math.ceil((end - self.first) / self.interval))
        return max(0, end_k - first_k)


@dataclass(slots=True)
class Tally:
    """What one process measured; several processes' tallies merge exactly."""

    by_kind: dict[str, Histogram] = field(default_factory=dict)
    """Latencies of the operations that succeeded (a txn's conflicts included), by kind."""
    errors: Counter[str] = field(default_factory=Counter)
    conflicts: int = 0
    writes: Histogram = field(default_factory=Histogram)
    """The watch workload's puts (its operations are the deliveries)."""
    sent: int = 0
    """Requests sent inside the window (counted ones)."""
    backlog: int = 0
    """Open loop with catch-up: due times inside the window that no worker got to send."""
    elapsed_s: float = 0.0
    connections: int = 0

    @property
    def ops(self) -> int:
        return sum(h.total for h in self.by_kind.values())

    def record(self, kind: str, seconds: float) -> None:
        if kind == WRITE_KIND:
            self.writes.record(seconds)
            return
        h = self.by_kind.get(kind)
        if h is None:
            h = self.by_kind[kind] = Histogram()
        h.record(seconds)

    def overall(self) -> Histogram:
        out = Histogram()
        for h in self.by_kind.values():
            out.merge(h)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"by_kind": {k: h.to_json() for k, h in sorted(self.by_kind.items())},
                "errors": dict(self.errors), "conflicts": self.conflicts,
                "writes": self.writes.to_json(), "sent": self.sent, "backlog": self.backlog,
                "elapsed_s": self.elapsed_s, "connections": self.connections}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(by_kind={str(k): Histogram.from_json(v) for k, v in data["by_kind"].items()},
                   errors=Counter({str(k): int(v) for k, v in data["errors"].items()}),
                   conflicts=int(data["conflicts"]), writes=Histogram.from_json(data["writes"]),
                   sent=int(data["sent"]), backlog=int(data["backlog"]),
                   elapsed_s=float(data["elapsed_s"]), connections=int(data["connections"]))


def merge_tallies(parts: Iterable[Tally]) -> Tally:
    """Processes that measured the same window side by side, as one measurement.

    Counts add up over the shared window rather than rates being averaged;
    the elapsed time is the longest any process measured (they share a start,
    and a process that drained longer defines when the run ended).
    """
    out = Tally()
    for part in parts:
        for kind, h in part.by_kind.items():
            out.by_kind.setdefault(kind, Histogram()).merge(h)
        out.errors.update(part.errors)
        out.conflicts += part.conflicts
        out.writes.merge(part.writes)
        out.sent += part.sent
        out.backlog += part.backlog
        out.elapsed_s = max(out.elapsed_s, part.elapsed_s)
        out.connections += part.connections
    return out


@dataclass(slots=True)
class Window:
    """The measured window of one process and the tally of what happened in it."""

    start: float
    end: float | None
    """None: the run is bounded by ``slots_left`` requests instead."""
    drain: bool = False
    slots_left: int | None = None
    tally: Tally = field(default_factory=Tally)
    last_finish: float | None = None
    stopping: bool = False

    def admit(self, origin: float, now: float) -> bool | None:
        """Whether a request with this origin counts; None: send no more."""
        if self.stopping or (self.end is not None and (origin >= self.end or now >= self.end)):
            return None
        if origin < self.start:
            return False  # warm-up
        if self.slots_left is not None:
            if self.slots_left == 0:
                return None
            self.slots_left -= 1
        self.tally.sent += 1
        return True

    def _inside(self, finished: float) -> bool:
        return self.drain or self.end is None or finished <= self.end

    def done(self, origin: float, finished: float, outcome: Done) -> None:
        if not self._inside(finished):
            return
        self.tally.record(outcome.kind, finished - origin)
        if outcome.conflict:
            self.tally.conflicts += 1
        if self.last_finish is None or finished > self.last_finish:
            self.last_finish = finished

    def failed(self, finished: float, code: str) -> None:
        if self._inside(finished):
            self.tally.errors[code] += 1
            if self.last_finish is None or finished > self.last_finish:
                self.last_finish = finished

    def delivered(self, sent: float, received: float) -> None:
        """A watch event written at ``sent`` (this process's clock) arrived at ``received``."""
        if sent >= self.start and self._inside(received) and received >= sent:
            self.tally.record("watch", received - sent)

    def close(self, schedule: Schedule | None) -> None:
        """Once every worker has returned: how long the window was, and what went unsent."""
        last = self.last_finish if self.last_finish is not None else self.start
        if self.end is None:
            self.tally.elapsed_s = max(last - self.start, 0.0)
        elif self.drain:
            self.tally.elapsed_s = max(self.end, last) - self.start
        else:
            self.tally.elapsed_s = self.end - self.start
        if schedule is not None and schedule.catch_up and self.end is not None:
            due = schedule.slots_between(self.start, self.end)
            self.tally.backlog = max(0, due - self.tally.sent)


async def drive(op: Operation, window: Window, *, schedule: Schedule | None = None,
                clock: Clock = time.perf_counter, sleep: Sleep = asyncio.sleep) -> None:
    """One worker: send requests until the window says no more.

    A failure that retrying cannot cure (a malformed request, one that auth
    refuses, an unbuilt consistency level) is raised, since every request would
    fail alike; any other error is counted by its code.
    """
    corrected = schedule is not None and schedule.catch_up
    while True:
        now = clock()
        if schedule is None:
            origin = now
        else:
            due = schedule.take(now)
            if window.end is not None and due >= window.end:
                return
            if due > now:
                await sleep(due - now)
                now = clock()
            origin = due if corrected else now
        counted = window.admit(origin, now)
        if counted is None:
            return
        try:
            outcome = await op()
        except (RequestError, NotBuiltYet):
            raise
        except QuorumKVError as err:
            if counted:
                window.failed(clock(), err.code)
            if schedule is None:
                await sleep(ERROR_PAUSE_S)
            continue
        if counted:
            window.done(origin, clock(), outcome)
