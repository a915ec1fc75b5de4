"""The backup file (``quorumkv snapshot save``): layout, and checking it as its bytes go by.

A backup is one self-describing file::

    magic          8s   b"QKV-BKUP"
    version        u16  format version (1)
    fields_len     u32  bytes of the fields below, up to the image
    cluster_id     u64  the cluster it was taken from
    applied_index  u64  the source member's applied log index at the copy
    applied_term   u64  the term of that entry
    revision       u64  the store's revision at the copy
    compact_rev    u64  its compact revision
    key_count      u64  live keys at ``revision``
    image_len      u64  bytes of the image
    created_ns     u64  when the copy was taken (Unix time, nanoseconds, the node's clock)
    member_len     u16  \\ the name of the member that took it, UTF-8
    member         ...  /
    image          image_len bytes: the state machine's LMDB data file, compacted
    sha256         32 bytes: SHA-256 of every byte before it

The header says how long the file must be, and the digest covers the
header as well as the image, so a truncated, extended or altered file,
whatever byte it touches, is refused (CorruptSnapshot naming the file and
what is wrong) before anything is restored from it.

:class:`BackupChecker` checks a backup as it is read or received, in one
pass and bounded memory, and hands back the image bytes it passes over:
the client checks a backup while it downloads it, ``snapshot status``
while it reads it, and a restore while it copies the image out.

The etcd trailer. ``etcdctl snapshot save`` (through the etcd port's
Snapshot) accepts a file only if its size is 32 more than a multiple of
512, the shape of etcd's own (a bbolt file, then its SHA-256). The etcd
port therefore sends a backup followed by zero bytes up to the next
multiple of 512 and a SHA-256 of everything before it
(:func:`etcd_trailer`). A file with exactly that trailer is a backup as
good as the bare one: both digests are checked, and ``snapshot status``
and ``restore`` read it. Any other extra byte is still damage.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from quorumkv.errors import CorruptSnapshot, StorageError

MAGIC = b"QKV-BKUP"
VERSION = 1
PREFIX = struct.Struct(">8sHI")
"""magic, format version, length of the fields that follow."""
_FIELDS = struct.Struct(">QQQQQQQQH")
"""cluster id, applied index, applied term, revision, compact revision, key count, image
length, creation time, member name length; the name follows."""
DIGEST_SIZE = hashlib.sha256().digest_size
MAX_FIELDS = 64 << 10
"""A header beyond this is damage, not a long member name."""
_U64 = (1 << 64) - 1
ETCD_ALIGN = 512
"""etcd's snapshot files are a multiple of this, plus their digest."""
_READ_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupHeader:
    """What a backup says about itself (everything but the image and the digest)."""

    cluster_id: int
    member: str
    applied_index: int
    applied_term: int
    revision: int
    compact_revision: int
    key_count: int
    image_size: int
    created_ns: int
    version: int = VERSION

    def encode(self) -> bytes:
        name = self.member.encode()
        numbers = (self.cluster_id, self.applied_index, self.applied_term, self.revision,
                   self.compact_revision, self.key_count, self.image_size, self.created_ns)
        if not all(0 <= n <= _U64 for n in numbers) or len(name) > 0xFFFF:
            raise ValueError("a backup header field is out of range")
        fields = _FIELDS.pack(*numbers, len(name)) + name
        return PREFIX.pack(MAGIC, self.version, len(fields)) + fields

    @property
    def header_size(self) -> int:
        """Bytes before the image."""
        return PREFIX.size + _FIELDS.size + len(self.member.encode())

    @property
    def file_size(self) -> int:
        """Bytes of the whole file this header describes."""
        return self.header_size + self.image_size + DIGEST_SIZE


@dataclass(frozen=True, slots=True, kw_only=True)
class BackupInfo:
    """A backup that was checked whole: its header, its size and its digest."""

    header: BackupHeader
    file_size: int
    sha256: str
    """Hex SHA-256 of everything before the digest (what the file records, and matches)."""


def parse_header(data: bytes | bytearray, source: str) -> BackupHeader | None:
    """The header at the start of ``data``; None if ``data`` is too short to hold it yet.

    Raises CorruptSnapshot for anything that is not a backup of a format this
    version reads.
    """
    if len(data) < PREFIX.size:
        if not MAGIC.startswith(bytes(data[:len(MAGIC)])):
            raise _not_a_backup(source)
        return None
    magic, version, fields_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise _not_a_backup(source)
    if version != VERSION:
        raise CorruptSnapshot(f"{source} is a backup of format version {version}; this "
                              f"version of quorumkv reads version {VERSION}", path=source)
    if not _FIELDS.size <= fields_len <= MAX_FIELDS:
        raise CorruptSnapshot(f"the header of backup {source} is damaged (its fields "
                              f"claim {fields_len} bytes)", path=source)
    if len(data) < PREFIX.size + fields_len:
        return None
    *numbers, name_len = _FIELDS.unpack_from(data, PREFIX.size)
    name_start = PREFIX.size + _FIELDS.size
    if name_len != fields_len - _FIELDS.size:
        raise CorruptSnapshot(f"the header of backup {source} is damaged (member name of "
                              f"{name_len} bytes in {fields_len - _FIELDS.size})", path=source)
    try:
        member = bytes(data[name_start:name_start + name_len]).decode()
    except UnicodeDecodeError:
        raise CorruptSnapshot(f"the header of backup {source} is damaged (member name is "
                              "not UTF-8)", path=source) from None
    cluster_id, applied_index, applied_term, revision, compact, keys, image, created = numbers
    return BackupHeader(cluster_id=cluster_id, member=member, applied_index=applied_index,
                        applied_term=applied_term, revision=revision, compact_revision=compact,
                        key_count=keys, image_size=image, created_ns=created, version=version)


def etcd_padding(file_size: int) -> int:
    """Zero bytes after a backup of ``file_size`` bytes, before the etcd trailer's digest."""
    return -file_size % ETCD_ALIGN


def etcd_trailer(backup_size: int, digest: bytes) -> bytes:
    """What follows a backup of ``backup_size`` bytes on the etcd port: the padding, then
    ``digest``, the SHA-256 of the backup's bytes and the padding."""
    return bytes(etcd_padding(backup_size)) + digest


def _with_etcd_trailer(file_size: int) -> int:
    return file_size + etcd_padding(file_size) + DIGEST_SIZE


def _not_a_backup(source: str) -> CorruptSnapshot:
    return CorruptSnapshot(f"{source} is not a quorumkv backup file", path=source)


def _short(source: str, size: int) -> CorruptSnapshot:
    """A file that ends before its header does."""
    if not size:
        return CorruptSnapshot(f"{source} is empty: not a quorumkv backup file", path=source)
    return CorruptSnapshot(f"{source} is truncated: it ends inside its header ({size} bytes)",
                           path=source)


class BackupChecker:
    """Checks a backup whose bytes are fed to :meth:`update` in order, in any pieces.

    Memory stays bounded (the header, at most :data:`MAX_FIELDS`, and the
    32 digest bytes); :meth:`finish` says whether the whole file was right.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self._head = bytearray()
        self.header: BackupHeader | None = None
        """Known once its bytes have gone by."""
        self._hash = hashlib.sha256()
        self._received = 0
        self._trailer = bytearray()
        self._excess = 0
        self._outer = hashlib.sha256()
        """Of the backup and the padding of an etcd trailer (see the module's docstring)."""
        self._extra = bytearray()
        """The bytes after the backup, as many as an etcd trailer has at most."""

    @property
    def received(self) -> int:
        return self._received

    def update(self, data: bytes | bytearray | memoryview) -> memoryview:
        """Take the next bytes of the file; return those of them that are image bytes."""
        view = memoryview(data).cast("B")
        if self.header is not None:
            return self._consume(view)
        self._head += view
        self._received += len(view)
        # parse_header refuses a header longer than MAX_FIELDS, which bounds _head.
        self.header = parse_header(self._head, self.source)
        if self.header is None:
            return memoryview(b"")
        head, self._head = bytes(self._head), bytearray()
        self._received = 0
        return self._consume(memoryview(head))

    def _consume(self, view: memoryview) -> memoryview:
        assert self.header is not None
        start, end = self._received, self._received + len(view)
        self._received = end
        body_end = self.header.file_size - DIGEST_SIZE
        image_start = self.header.header_size
        if start < body_end:
            self._hash.update(view[:body_end - start])
        outer_end = self.header.file_size + etcd_padding(self.header.file_size)
        if start < outer_end:
            self._outer.update(view[:outer_end - start])
        if end > self.header.file_size:
            room = ETCD_ALIGN + DIGEST_SIZE - len(self._extra)
            self._extra += view[max(0, self.header.file_size - start):][:room]
        if end > body_end:
            tail = view[max(0, body_end - start):]
            room = DIGEST_SIZE - len(self._trailer)
            self._trailer += tail[:room]
            self._excess += max(0, len(tail) - room)
        lo, hi = max(start, image_start), min(end, body_end)
        return view[lo - start:hi - start] if lo < hi else memoryview(b"")

    def finish(self) -> BackupInfo:
        """The backup's header and digest once every byte went by; CorruptSnapshot if the
        file is truncated, too long or does not match its digest."""
        header, source = self.header, self.source
        if header is None:
            raise _short(source, len(self._head))
        if self._received < header.file_size:
            raise CorruptSnapshot(f"{source} is truncated: its header promises "
                                  f"{header.file_size} bytes, it has {self._received}",
                                  path=source)
        if self._excess and not self._etcd_trailer_ok(header):
            raise CorruptSnapshot(f"{source} has {self._excess} bytes more than its header "
                                  f"promises ({header.file_size}): the header or the file is "
                                  "damaged", path=source)
        recorded, actual = bytes(self._trailer), self._hash.digest()
        if recorded != actual:
            raise CorruptSnapshot(f"checksum mismatch in {source}: it records SHA-256 "
                                  f"{recorded.hex()[:16]}..., its content hashes to "
                                  f"{actual.hex()[:16]}...; the backup is damaged", path=source)
        return BackupInfo(header=header, file_size=header.file_size + self._excess,
                          sha256=actual.hex())

    def _etcd_trailer_ok(self, header: BackupHeader) -> bool:
        size = header.file_size
        if size + self._excess != _with_etcd_trailer(size) or len(self._extra) != self._excess:
            return False
        padding, digest = self._extra[:-DIGEST_SIZE], bytes(self._extra[-DIGEST_SIZE:])
        return not any(padding) and digest == self._outer.digest()


def read_header(path: Path) -> tuple[BackupHeader, int]:
    """The header of the backup at ``path`` and the file's size, without reading the image.

    Catches a wrong kind of file and a truncation at once, before a long
    read; only :func:`check_file` (or a :class:`BackupChecker`) proves the rest.
    """
    source = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(PREFIX.size + MAX_FIELDS)
    except OSError as e:
        raise StorageError(f"cannot read backup {source}: {e.strerror or e}",
                           path=source) from None
    header = parse_header(head, source)
    if header is None:
        raise _short(source, len(head))
    if size < header.file_size:
        raise CorruptSnapshot(f"{source} is truncated: its header promises {header.file_size} "
                              f"bytes, it has {size}", path=source)
    if size > header.file_size and size != _with_etcd_trailer(header.file_size):
        raise CorruptSnapshot(f"{source} has {size - header.file_size} bytes more than its "
                              f"header promises ({header.file_size}): the header or the file "
                              "is damaged", path=source)
    return header, size


def check_file(path: Path) -> BackupInfo:
    """Read the whole backup at ``path`` and check it; CorruptSnapshot says what is wrong."""
    read_header(path)
    checker = BackupChecker(str(path))
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_READ_CHUNK):
                checker.update(chunk)
    except OSError as e:
        raise StorageError(f"cannot read backup {path}: {e.strerror or e}",
                           path=str(path)) from None
    return checker.finish()
