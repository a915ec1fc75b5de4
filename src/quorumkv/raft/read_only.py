"""Pending ReadIndex requests on the leader (thesis §6.4).

A read registered at commit index ``c`` may be served once a majority has
answered a heartbeat sent *after* the read was registered: then the leader
was still the leader when the read arrived, so no newer commit can exist
beyond ``c`` that the read would miss. Acks are matched by the read's
``context``; an ack for a later read also confirms every earlier one, because
its heartbeat round started after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class PendingRead:
    context: bytes
    index: int
    origin: int
    """The node that asked: the leader itself, or a follower that forwarded the read."""
    acks: set[int] = field(default_factory=set)


class ReadOnlyQueue:
    __slots__ = ("_by_context", "_order")

    def __init__(self) -> None:
        self._by_context: dict[bytes, PendingRead] = {}
        self._order: list[bytes] = []

    def add(self, *, context: bytes, index: int, origin: int, self_id: int) -> None:
        if context in self._by_context:
            return
        self._by_context[context] = PendingRead(
            context=context, index=index, origin=origin, acks={self_id})
        self._order.append(context)

    def ack(self, context: bytes, node: int) -> set[int] | None:
        pending = self._by_context.get(context)
        if pending is None:
            return None
        pending.acks.add(node)
        return pending.acks

    def release_through(self, context: bytes) -> list[PendingRead]:
        """Remove and return every read up to and including ``context``."""
        if context not in self._by_context:
            return []
        cut = self._order.index(context) + 1
        released = [self._by_context.pop(c) for c in self._order[:cut]]
        del self._order[:cut]
        return released

    def last_context(self) -> bytes | None:
        return self._order[-1] if self._order else None

    def drain(self) -> list[PendingRead]:
        out = [self._by_context[c] for c in self._order]
        self._by_context.clear()
        self._order.clear()
        return out

    def __len__(self) -> int:
        return len(self._order)
