"""Payload encodings of the log's record types, and of snapshot metadata.

Fixed-layout ``struct`` fields, big-endian: a few bytes per record, no
schema to negotiate and nothing that can execute code (never pickle).
Every decoder raises ``ValueError`` on a malformed payload; the reader turns
that into the storage error that names the file and offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from quorumkv.raft.entries import ConfState, Entry, EntryType, HardState, SnapshotMeta

ENTRY_HEAD = struct.Struct(">QQB")
"""term, index, entry type; the entry's data follows."""

_HARD_STATE = struct.Struct(">QQQ")
_SNAPSHOT_HEAD = struct.Struct(">QQII")
"""index, term, voter count, learner count; then the ids, u64 each."""

_U64 = struct.Struct(">Q")

SEGMENT_MAGIC = b"QKV-WAL\n"
SEGMENT_VERSION = 1
_SEGMENT_HEADER = struct.Struct(">8sHQQI")
"""magic, format version, segment sequence number, first entry index, checksum salt."""


def entry_head(entry: Entry) -> bytes:
    return ENTRY_HEAD.pack(entry.term, entry.index, int(entry.type))


def decode_entry(payload: memoryview) -> Entry:
    if len(payload) < ENTRY_HEAD.size:
        raise ValueError("entry record too short")
    term, index, etype = ENTRY_HEAD.unpack_from(payload)
    try:
        kind = EntryType(etype)
    except ValueError:
        raise ValueError(f"unknown entry type {etype}") from None
    return Entry(term=term, index=index, type=kind, data=bytes(payload[ENTRY_HEAD.size:]))


def encode_hard_state(hs: HardState) -> bytes:
    return _HARD_STATE.pack(hs.term, hs.vote, hs.commit)


def decode_hard_state(payload: memoryview) -> HardState:
    if len(payload) != _HARD_STATE.size:
        raise ValueError("hard state record has the wrong size")
    term, vote, commit = _HARD_STATE.unpack_from(payload)
    return HardState(term=term, vote=vote, commit=commit)


def encode_snapshot_meta(meta: SnapshotMeta) -> bytes:
    voters = sorted(meta.conf.voters)
    learners = sorted(meta.conf.learners)
    ids = voters + learners
    return (_SNAPSHOT_HEAD.pack(meta.index, meta.term, len(voters), len(learners))
            + struct.pack(f">{len(ids)}Q", *ids))


def decode_snapshot_meta(payload: memoryview | bytes) -> SnapshotMeta:
    if len(payload) < _SNAPSHOT_HEAD.size:
        raise ValueError("snapshot metadata too short")
    index, term, n_voters, n_learners = _SNAPSHOT_HEAD.unpack_from(payload)
    if len(payload) != _SNAPSHOT_HEAD.size + _U64.size * (n_voters + n_learners):
        raise ValueError("snapshot metadata has the wrong size for its member counts")
    ids = struct.unpack_from(f">{n_voters + n_learners}Q", payload, _SNAPSHOT_HEAD.size)
    voters, learners = frozenset(ids[:n_voters]), frozenset(ids[n_voters:])
    if voters & learners or len(voters) != n_voters or len(learners) != n_learners:
        raise ValueError("snapshot metadata lists a member twice")
    return SnapshotMeta(index=index, term=term, conf=ConfState(voters=voters, learners=learners))


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentHeader:
    seq: int
    first_index: int
    salt: int


SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size


def encode_segment_header(header: SegmentHeader) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, SEGMENT_VERSION, header.seq,
                                header.first_index, header.salt)


def has_segment_magic(payload: memoryview | bytes) -> bool:
    return bytes(payload[:len(SEGMENT_MAGIC)]) == SEGMENT_MAGIC


def decode_segment_header(payload: memoryview) -> tuple[int, SegmentHeader]:
    """Return (format version, header); the caller decides what versions it reads."""
    if len(payload) != _SEGMENT_HEADER.size:
        raise ValueError("segment header has the wrong size")
    magic, version, seq, first_index, salt = _SEGMENT_HEADER.unpack_from(payload)
    if magic != SEGMENT_MAGIC:
        raise ValueError("not a quorumkv WAL segment")
    return version, SegmentHeader(seq=seq, first_index=first_index, salt=salt)
