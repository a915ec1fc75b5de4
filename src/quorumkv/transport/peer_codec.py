"""Raft messages to bytes and back: msgpack arrays, strictly checked on the way in.

Layout: ``[kind, version, group, src, dst, term, *fields]``. Bytes from a
peer are untrusted: every field's type and range is checked, and anything
else raises :class:`~quorumkv.errors.ProtocolError` naming what was wrong.
Never pickle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack

from quorumkv.errors import ProtocolError
from quorumkv.raft.entries import ConfState, Entry, EntryType, SnapshotMeta
from quorumkv.raft.messages import (
    AppendRequest,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)

VERSION = 1
_MAX_U64 = (1 << 64) - 1

_KINDS: dict[type[Message], int] = {
    VoteRequest: 1, VoteResponse: 2, AppendRequest: 3, AppendResponse: 4, Heartbeat: 5,
    HeartbeatResponse: 6, InstallSnapshot: 7, TimeoutNow: 8, ReadIndexRequest: 9,
    ReadIndexResponse: 10,
}


def _entry(e: Entry) -> list[Any]:
    return [e.term, e.index, int(e.type), e.data]


def _snapshot(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, sorted(meta.conf.voters), sorted(meta.conf.learners)]


def _fields(m: Message) -> list[Any]:
    if isinstance(m, VoteRequest):
        return [m.last_log_index, m.last_log_term, m.pre_vote, m.transfer]
    if isinstance(m, VoteResponse):
        return [m.granted, m.pre_vote]
    if isinstance(m, AppendRequest):
        return [m.prev_index, m.prev_term, [_entry(e) for e in m.entries], m.commit]
    if isinstance(m, AppendResponse):
        return [m.index, m.reject, m.hint_index, m.hint_term]
    if isinstance(m, Heartbeat):
        return [m.commit, m.context]
    if isinstance(m, HeartbeatResponse):
        return [m.context]
    if isinstance(m, InstallSnapshot):
        return [_snapshot(m.snapshot)]
    if isinstance(m, TimeoutNow):
        return []
    if isinstance(m, ReadIndexRequest):
        return [m.context]
    if isinstance(m, ReadIndexResponse):
        return [m.context, m.index]
    raise TypeError(f"not a Raft message: {type(m).__name__}")


def encode_message(m: Message) -> bytes:
    header = [_KINDS[type(m)], VERSION, m.group, m.src, m.dst, m.term]
    return msgpack.packb(header + _fields(m), use_bin_type=True)  # type: ignore[no-any-return]


# -- decoding -----------------------------------------------------------------------


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v <= _MAX_U64:
        raise ProtocolError(f"{what} must be an unsigned integer, got {type(v).__name__}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise ProtocolError(f"{what} must be a boolean, got {type(v).__name__}")
    return v


def _bytes(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise ProtocolError(f"{what} must be bytes, got {type(v).__name__}")
    return v


def _list(v: Any, what: str, size: int | None = None) -> list[Any]:
    if type(v) is not list or (size is not None and len(v) != size):
        want = f"a list of {size}" if size is not None else "a list"
        raise ProtocolError(f"{what} must be {want}")
    return v


def _decode_entry(v: Any) -> Entry:
    term, index, kind, data = _list(v, "entry", 4)
    try:
        etype = EntryType(_uint(kind, "entry type"))
    except ValueError:
        raise ProtocolError(f"unknown entry type {kind}") from None
    return Entry(term=_uint(term, "entry term"), index=_uint(index, "entry index"),
                 type=etype, data=_bytes(data, "entry data"))


def _decode_snapshot(v: Any) -> SnapshotMeta:
    index, term, voters, learners = _list(v, "snapshot", 4)
    vs = frozenset(_uint(x, "voter") for x in _list(voters, "voters"))
    ls = frozenset(_uint(x, "learner") for x in _list(learners, "learners"))
    if vs & ls:
        raise ProtocolError("a node cannot be both voter and learner in a snapshot")
    return SnapshotMeta(index=_uint(index, "snapshot index"), term=_uint(term, "snapshot term"),
                        conf=ConfState(voters=vs, learners=ls))


def _decode_append(h: dict[str, Any], f: list[Any]) -> Message:
    prev_index, prev_term, entries, commit = f
    decoded = tuple(_decode_entry(e) for e in _list(entries, "entries"))
    for k, e in enumerate(decoded):
        if e.index != _uint(prev_index, "prev_index") + 1 + k:
            raise ProtocolError("append entries are not contiguous after prev_index")
    return AppendRequest(**h, prev_index=_uint(prev_index, "prev_index"),
                         prev_term=_uint(prev_term, "prev_term"), entries=decoded,
                         commit=_uint(commit, "commit"))


_DECODERS: dict[int, tuple[int, Callable[[dict[str, Any], list[Any]], Message]]] = {
    1: (4, lambda h, f: VoteRequest(**h, last_log_index=_uint(f[0], "last_log_index"),
                                    last_log_term=_uint(f[1], "last_log_term"),
                                    pre_vote=_bool(f[2], "pre_vote"),
                                    transfer=_bool(f[3], "transfer"))),
    2: (2, lambda h, f: VoteResponse(**h, granted=_bool(f[0], "granted"),
                                     pre_vote=_bool(f[1], "pre_vote"))),
    3: (4, _decode_append),
    4: (4, lambda h, f: AppendResponse(**h, index=_uint(f[0], "index"),
                                       reject=_bool(f[1], "reject"),
                                       hint_index=_uint(f[2], "hint_index"),
                                       hint_term=_uint(f[3], "hint_term"))),
    5: (2, lambda h, f: Heartbeat(**h, commit=_uint(f[0], "commit"),
                                  context=_bytes(f[1], "context"))),
    6: (1, lambda h, f: HeartbeatResponse(**h, context=_bytes(f[0], "context"))),
    7: (1, lambda h, f: InstallSnapshot(**h, snapshot=_decode_snapshot(f[0]))),
    8: (0, lambda h, f: TimeoutNow(**h)),
    9: (1, lambda h, f: ReadIndexRequest(**h, context=_bytes(f[0], "context"))),
    10: (2, lambda h, f: ReadIndexResponse(**h, context=_bytes(f[0], "context"),
                                           index=_uint(f[1], "index"))),
}


def decode_message(data: bytes) -> Message:
    """Decode one peer frame; ProtocolError for anything that is not a valid message."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as e:  # msgpack raises several unrelated types for bad input
        raise ProtocolError(f"peer frame is not valid msgpack: {type(e).__name__}") from None
    if type(obj) is not list or len(obj) < 6:
        raise ProtocolError("peer frame must be a list [kind, version, group, src, dst, term, ...]")
    kind, version, group, src, dst, term, *fields = obj
    if version != VERSION:
        raise ProtocolError(f"unsupported peer protocol version {version!r} (we speak {VERSION})")
    spec = _DECODERS.get(kind) if type(kind) is int else None
    if spec is None:
        raise ProtocolError(f"unknown peer message kind {kind!r}")
    arity, build = spec
    if len(fields) != arity:
        raise ProtocolError(f"peer message kind {kind} needs {arity} fields, got {len(fields)}")
    header = {"group": _uint(group, "group"), "src": _uint(src, "src"),
              "dst": _uint(dst, "dst"), "term": _uint(term, "term")}
    try:
        return build(header, fields)
    except ProtocolError:
        raise
    except (TypeError, ValueError, AssertionError) as e:
        raise ProtocolError(f"malformed peer message kind {kind}: {e}") from None
