"""The coordination part of the client protocol: watches and lease keep-alives.

Requests (``[request_id, op, args]`` like every other, see protocol.py)::

    "watch"        {"key": bin, "range_end": bin|nil = nil, "start_revision": int = 0,
                    "prev_kv": bool = false, "progress_notify": bool = false}
    "watch_cancel" {"watch_id": int}                       -> {"canceled": true, "header"}
    "lease_keepalive" {"id": int}                          -> {"id", "ttl", "header"}
    "lease_ttl"    {"id": int, "keys": bool = false}       -> {"id", "ttl", "remaining",
                                                               "keys": [bin]|nil, "header"}
    "lease_list"   {}                                      -> {"leases": [{"id", "ttl"}], "header"}

A watch is a *stream*: the node answers the request once,
``{"watch_id": int, "revision": int, "progress_interval": float, "header"}``
when the watch exists (``revision``: events after it are live; anything
from ``start_revision`` up to it is replayed first; ``progress_interval``:
how often an idle watch with ``progress_notify`` hears from the node), then
keeps sending response frames with the same request id::

    {"watch_id", "events": [event], "revision": int, "header"}   events of whole revisions,
                                                                  in revision order
    {"watch_id", "events": [], "progress": true, "revision": int} nothing happened up to it
    {"watch_id", "canceled": true, "reason": str, "code": str,    the last frame of the stream
     "compact_revision": int|nil}

    event    {"type": "put"|"delete", "kv": kv, "prev_kv": kv|nil}

``start_revision`` 0 means "from now". A start at or below the compact
revision is refused with Compacted (``compact_revision`` in its details).
Every event of a watch is sent exactly once, in revision order; a client
that loses its connection resumes on any node from the revision after the
last one it received. A watcher that does not keep up is cancelled (code
``watch_canceled``) once a bounded number of events wait for it: the node's
apply loop never waits for a watcher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from quorumkv.client.fields import FieldReader
from quorumkv.client.results_wire import kv_from_wire, kv_to_wire
from quorumkv.errors import ProtocolError
from quorumkv.kv.keys import ALL_KEYS
from quorumkv.kv.results import Event, EventType, KeyValue

COORDINATION_OPS: Final = ("watch", "watch_cancel", "lease_keepalive", "lease_ttl",
                           "lease_list")


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchRequest:
    key: bytes
    range_end: bytes | None = None
    start_revision: int = 0
    prev_kv: bool = False
    progress_notify: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchCancelRequest:
    watch_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseKeepAliveRequest:
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseTimeToLiveRequest:
    id: int
    keys: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseListRequest:
    pass


CoordinationRequest = (WatchRequest | WatchCancelRequest | LeaseKeepAliveRequest
                       | LeaseTimeToLiveRequest | LeaseListRequest)


def coordination_args(req: CoordinationRequest) -> tuple[str, dict[str, Any]]:
    if isinstance(req, WatchRequest):
        return "watch", {"key": req.key, "range_end": req.range_end,
                         "start_revision": req.start_revision, "prev_kv": req.prev_kv,
                         "progress_notify": req.progress_notify}
    if isinstance(req, WatchCancelRequest):
        return "watch_cancel", {"watch_id": req.watch_id}
    if isinstance(req, LeaseKeepAliveRequest):
        return "lease_keepalive", {"id": req.id}
    if isinstance(req, LeaseTimeToLiveRequest):
        return "lease_ttl", {"id": req.id, "keys": req.keys}
    return "lease_list", {}


def parse_coordination(op: str, f: FieldReader) -> CoordinationRequest:
    if op == "watch":
        key = f.binary("key")
        range_end = f.optional_binary("range_end")
        if not key:
            raise f.fail("a watch needs a non-empty key")
        if range_end is not None and range_end != ALL_KEYS and range_end <= key:
            raise f.fail("range_end must be after key")
        return WatchRequest(key=key, range_end=range_end,
                            start_revision=f.integer("start_revision", 0),
                            prev_kv=f.boolean("prev_kv", False),
                            progress_notify=f.boolean("progress_notify", False))
    if op == "watch_cancel":
        return WatchCancelRequest(watch_id=f.integer("watch_id"))
    if op == "lease_keepalive":
        return LeaseKeepAliveRequest(id=_lease_id(f))
    if op == "lease_ttl":
        return LeaseTimeToLiveRequest(id=_lease_id(f), keys=f.boolean("keys", False))
    assert op == "lease_list"
    return LeaseListRequest()


def _lease_id(f: FieldReader) -> int:
    lease = f.integer("id")
    if lease == 0:
        raise f.fail("lease id 0 means no lease")
    return lease


# -- events ----------------------------------------------------------------------------


def event_to_wire(event: Event, *, prev_kv: bool) -> dict[str, Any]:
    prev = event.prev_kv if prev_kv else None
    return {"type": "put" if event.type is EventType.PUT else "delete",
            "kv": kv_to_wire(event.kv), "prev_kv": None if prev is None else kv_to_wire(prev)}


def event_from_wire(obj: object) -> Event:
    f = FieldReader(obj, "event", ProtocolError)
    kind = f.choice("type", ("put", "delete"))
    kv = kv_from_wire(f.raw("kv"))
    raw_prev = f.raw("prev_kv")
    prev: KeyValue | None = None if raw_prev is None else kv_from_wire(raw_prev)
    return Event(type=EventType.PUT if kind == "put" else EventType.DELETE, kv=kv,
                 prev_kv=prev)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchResponse:
    """One message of a watch: the events of one or more whole revisions, or progress."""

    watch_id: int
    events: tuple[Event, ...]
    revision: int
    """Everything up to this revision has been delivered."""
    progress: bool = False


def watch_message_from_wire(body: dict[str, Any]) -> WatchResponse | WatchEnd:
    f = FieldReader(body, "watch message", ProtocolError)
    watch_id = f.integer("watch_id")
    if body.get("canceled") is True:
        compact = body.get("compact_revision")
        return WatchEnd(watch_id=watch_id, reason=f.string("reason", ""),
                        code=f.string("code", ""),
                        compact_revision=compact if type(compact) is int else None)
    events = tuple(event_from_wire(e) for e in f.array("events"))
    return WatchResponse(watch_id=watch_id, events=events, revision=f.integer("revision"),
                         progress=body.get("progress") is True)


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchEnd:
    """The node ended the watch (cancelled on request, compacted, or too slow a reader)."""

    watch_id: int
    reason: str
    code: str
    compact_revision: int | None = None
