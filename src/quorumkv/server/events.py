"""The event feed: the notable things that happened to this node, newest last.

An operator asks "what happened?" after the fact: a leader lost, an election
won, a member added, a snapshot shipped, a peer gone silent. Each such moment
is recorded once, here, and that one record is both

- kept in a bounded, in-memory feed that ``GET /v1/events`` (and the
  dashboard) reads, each event numbered so a poller can ask for what it has
  not seen yet, and
- logged as one line through the ``quorumkv.events`` logger with
  ``extra={"event": KIND, "fields": {...}}`` (see :mod:`quorumkv.server.logs`),
  so a log pipeline can select events by kind without parsing messages.

An event is ``{"seq", "time", "kind", "level", "message", "fields"}``:
``seq`` counts from 1 for this process (a restarted node starts again at 1),
``time`` is wall-clock Unix seconds, ``level`` the log level's name in lower
case, ``fields`` plain JSON values. The feed keeps the last ``capacity``
events; older ones survive only in the log.

Callers never pass a secret: no message or field carries the cluster token.
The feed is one object per node (``Node.events``), never a module global, so
several nodes in one process (tests) keep separate feeds.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

DEFAULT_CAPACITY: Final = 500
DEFAULT_LIMIT: Final = 200
MAX_LIMIT: Final = 1000

# The kinds recorded by the node; docs/operations.md describes each.
NODE_STARTED: Final = "node_started"
NODE_STOPPING: Final = "node_stopping"
TERM_CHANGED: Final = "term_changed"
PRE_VOTE_STARTED: Final = "pre_vote_started"
ELECTION_STARTED: Final = "election_started"
BECAME_LEADER: Final = "became_leader"
BECAME_FOLLOWER: Final = "became_follower"
LEADER_CHANGED: Final = "leader_changed"
LEADER_LOST: Final = "leader_lost"
LEADERSHIP_TRANSFER: Final = "leadership_transfer"
MEMBER_ADDED: Final = "member_added"
MEMBER_PROMOTED: Final = "member_promoted"
MEMBER_REMOVED: Final = "member_removed"
SNAPSHOT_CREATED: Final = "snapshot_created"
SNAPSHOT_SENT: Final = "snapshot_sent"
SNAPSHOT_SEND_FAILED: Final = "snapshot_send_failed"
SNAPSHOT_INSTALLED: Final = "snapshot_installed"
PEER_HEALTH: Final = "peer_health"
DISK_FAILED: Final = "disk_failed"
LEASE_EXPIRED: Final = "lease_expired"

ELECTION_KINDS: Final = frozenset({PRE_VOTE_STARTED, ELECTION_STARTED, BECAME_LEADER,
                                   BECAME_FOLLOWER, LEADER_CHANGED, LEADER_LOST})
"""The kinds an election leaves behind, on the winner and on everyone else."""

_LOGGER = logging.getLogger("quorumkv.events")


def _plain(value: object) -> Any:
    """A JSON-ready copy of a field value: an event outlives the objects it mentions, and
    the feed is served as JSON."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence | set | frozenset) and not isinstance(value, bytes):
        return [_plain(v) for v in value]
    return str(value)


class EventFeed:
    def __init__(self, *, capacity: int = DEFAULT_CAPACITY,
                 logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("an event feed keeps at least one event")
        self._events: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._log = logger if logger is not None else _LOGGER
        self._clock = clock
        self._seq = 0

    @property
    def last_seq(self) -> int:
        """The number of the latest event (0 before the first)."""
        return self._seq

    @property
    def capacity(self) -> int:
        maxlen = self._events.maxlen
        assert maxlen is not None
        return maxlen

    def record(self, kind: str, message: str, *, level: int = logging.INFO,
               **fields: object) -> None:
        """Keep an event and log it once (at ``level``, with its kind and fields)."""
        self._seq += 1
        plain = {k: _plain(v) for k, v in fields.items()}
        self._events.append({
            "seq": self._seq, "time": self._clock(), "kind": kind,
            "level": logging.getLevelName(level).lower(), "message": message,
            "fields": plain,
        })
        self._log.log(level, "%s", message, extra={"event": kind, "fields": plain})

    def recent(self, since: int = 0, limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
        """The events numbered above ``since``, oldest first; at most ``limit``, the newest
        ones if more match (a feed is read to see what happens now).

        A ``since`` beyond the latest number comes from a poller that watched an
        earlier run of this node (numbers start again at 1 after a restart): it gets
        the feed from the start rather than nothing until the numbers catch up.
        """
        if limit <= 0:
            return []
        if since > self._seq:
            since = 0
        # The kept events are numbered without gaps, so where to start is arithmetic.
        first = self._seq - len(self._events) + 1
        start = max(since + 1, first, self._seq - limit + 1)
        return [dict(e, fields=dict(e["fields"]))
                for e in itertools.islice(self._events, start - first, None)]
