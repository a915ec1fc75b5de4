"""The on-disk layout of one snapshot file, and checking it.

A snapshot file is self-describing, so it can be streamed to a follower
byte for byte and checked there exactly as it is checked here::

    magic      8s   b"QKV-SNAP"
    version    u16
    meta_len   u32
    meta       meta_len bytes: SnapshotMeta (payload.encode_snapshot_meta)
    image      the state machine's image, opaque to storage
    image_len  u64  \
    crc        u32   | trailer: crc is the CRC-32 of every byte before the trailer
    end magic  8s   /  b"QKV-END\n"

The checksum sits in a trailer because it is known only once the image has
been written; files are written to a temporary name and renamed when
complete, so a file under its final name always has its trailer.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

from quorumkv.errors import CorruptSnapshot
from quorumkv.raft.entries import SnapshotMeta
from quorumkv.storage.payload import decode_snapshot_meta, encode_snapshot_meta
from quorumkv.storage.record import checksum

MAGIC = b"QKV-SNAP"
END_MAGIC = b"QKV-END\n"
VERSION = 1
HEAD = struct.Struct(">8sHI")
TRAILER = struct.Struct(">QI8s")
_MAX_META = 1 << 20

SUFFIX = ".snap"
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")

_VERIFY_CHUNK = 1 << 20


def snapshot_name(meta: SnapshotMeta) -> str:
    """``<term>-<index>.snap``, 16 hex digits each."""
    return f"{meta.term:016x}-{meta.index:016x}{SUFFIX}"


def parse_snapshot_name(name: str) -> tuple[int, int] | None:
    """(term, index) for a snapshot file name, or None if it is not one."""
    m = _NAME.match(name)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def encode_head(meta: SnapshotMeta) -> bytes:
    encoded = encode_snapshot_meta(meta)
    return HEAD.pack(MAGIC, VERSION, len(encoded)) + encoded


def encode_trailer(image_len: int, crc: int) -> bytes:
    return TRAILER.pack(image_len, crc, END_MAGIC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    meta: SnapshotMeta
    image_offset: int
    image_size: int
    file_size: int
    crc: int


def read_layout(fd: int, path: str) -> Layout:
    """Parse the header and trailer of an open snapshot file (the image is not read)."""
    file_size = os.fstat(fd).st_size
    head = os.pread(fd, HEAD.size, 0)
    if len(head) < HEAD.size or head[:len(MAGIC)] != MAGIC:
        raise CorruptSnapshot(f"{path} is not a quorumkv snapshot file", path=path)
    _, version, meta_len = HEAD.unpack(head)
    if version != VERSION:
        raise CorruptSnapshot(f"{path} has snapshot format version {version}; this version "
                              f"of quorumkv reads version {VERSION}", path=path)
    image_offset = HEAD.size + meta_len
    if meta_len > _MAX_META or image_offset + TRAILER.size > file_size:
        raise CorruptSnapshot(f"snapshot file {path} is truncated or its header is damaged "
                              f"({file_size} bytes)", path=path)
    try:
        meta = decode_snapshot_meta(os.pread(fd, meta_len, HEAD.size))
    except ValueError as e:
        raise CorruptSnapshot(f"snapshot file {path} has damaged metadata: {e}",
                              path=path) from None
    image_len, crc, end_magic = TRAILER.unpack(os.pread(fd, TRAILER.size,
                                                        file_size - TRAILER.size))
    if end_magic != END_MAGIC or image_offset + image_len + TRAILER.size != file_size:
        raise CorruptSnapshot(f"snapshot file {path} is truncated or its trailer is damaged "
                              f"({file_size} bytes)", path=path)
    return Layout(meta=meta, image_offset=image_offset, image_size=image_len,
                  file_size=file_size, crc=crc)


def verify_checksum(fd: int, layout: Layout, path: str) -> None:
    """Read the whole file and compare its checksum with the trailer's."""
    crc = 0
    offset = 0
    end = layout.file_size - TRAILER.size
    while offset < end:
        chunk = os.pread(fd, min(_VERIFY_CHUNK, end - offset), offset)
        if not chunk:
            break
        crc = checksum(chunk, crc)
        offset += len(chunk)
    if offset != end or crc != layout.crc:
        raise CorruptSnapshot(f"checksum mismatch in snapshot file {path}: the trailer says "
                              f"{layout.crc:#010x}, the content gives {crc:#010x}; the file is "
                              "damaged", path=path)
