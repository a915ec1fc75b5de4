"""A backup on the wire, and saving one to a file (``quorumkv snapshot save``).

The ``snapshot`` request (args ``{}``) is a *stream*, like a watch. The
node first answers once it holds a consistent copy of its store (taken
after a read index, so it holds every write acknowledged before the
request)::

    {"size": int, "format": int, "cluster_id": int, "member": str,
     "applied_index": int, "applied_term": int, "revision": int,
     "compact_revision": int, "key_count": int, "image_size": int,
     "created_ns": int, "header"}

``size`` is the length of the backup file (storage/backup_file.py) and the
other fields are its header. Then come the file's bytes, in order, in
frames with the same request id::

    {"offset": int, "data": bin, "done": bool}     "done" on the last one

An error frame (the node is shutting down, its disk failed) ends the
stream early. The node sends as fast as the connection takes the frames.
A node that answers the request itself with an error (it knows no leader,
so it cannot take a read index) has started nothing: the client asks the
next endpoint.

:func:`save_backup` writes the bytes to ``FILE.part`` as they arrive,
checking them as it goes (the digest covers everything, so a damaged
transfer is caught), then fsyncs the file, renames it to ``FILE`` and
fsyncs the directory: ``FILE`` is a whole, checked backup or is left as it
was. Chunks are written from the connection's reader, on the event loop,
so the node never sends faster than the disk takes them; a write there is
one chunk (1 MiB at most) into the page cache.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quorumkv.client.connection import Connection
from quorumkv.client.fields import MAX_UINT64, FieldReader
from quorumkv.client.protocol import SnapshotRequest
from quorumkv.client.retrying_caller import RetryingCaller
from quorumkv.errors import (
    ProtocolError,
    QuorumKVError,
    StorageError,
    Timeout,
    UnavailableError,
)
from quorumkv.storage import fsutil
from quorumkv.storage.backup_file import BackupChecker, BackupHeader, BackupInfo

PART_SUFFIX = ".part"
DEFAULT_STALL_TIMEOUT = 60.0
_RETRY_PAUSE = 0.2
"""Seconds between attempts on successive nodes, so a cluster without a leader is not
hammered."""

Progress = Callable[[int, int], None]
"""Called with (bytes received, bytes in all) as a backup arrives."""


# -- the wire -------------------------------------------------------------------------------


def offer_to_wire(header: BackupHeader, node_header: dict[str, Any]) -> dict[str, Any]:
    """The stream's first answer: what the node is about to send."""
    return {"size": header.file_size, "format": header.version,
            "cluster_id": header.cluster_id, "member": header.member,
            "applied_index": header.applied_index, "applied_term": header.applied_term,
            "revision": header.revision, "compact_revision": header.compact_revision,
            "key_count": header.key_count, "image_size": header.image_size,
            "created_ns": header.created_ns, "header": node_header}


def offer_from_wire(body: dict[str, Any]) -> BackupHeader:
    f = FieldReader(body, "snapshot answer", ProtocolError)

    def u64(name: str) -> int:
        return f.integer(name, high=MAX_UINT64)

    header = BackupHeader(cluster_id=u64("cluster_id"), member=f.string("member"),
                          applied_index=u64("applied_index"), applied_term=u64("applied_term"),
                          revision=u64("revision"), compact_revision=u64("compact_revision"),
                          key_count=u64("key_count"), image_size=u64("image_size"),
                          created_ns=u64("created_ns"), version=f.integer("format"))
    if f.integer("size", high=MAX_UINT64) != header.file_size:
        raise ProtocolError("a snapshot answer whose size does not match its header")
    return header


def chunk_to_wire(offset: int, data: bytes, *, done: bool) -> dict[str, Any]:
    return {"offset": offset, "data": data, "done": done}


def chunk_from_wire(body: dict[str, Any]) -> tuple[int, bytes, bool]:
    f = FieldReader(body, "snapshot chunk", ProtocolError)
    return f.integer("offset", high=MAX_UINT64), f.binary("data"), f.boolean("done")


# -- saving ---------------------------------------------------------------------------------


class _Receiver:
    """Writes the stream's chunks to the part file as the connection delivers them."""

    def __init__(self, part: Path, final: Path, progress: Progress | None) -> None:
        self.part = part
        self.checker = BackupChecker(str(final))
        self.progress = progress
        self.total = 0
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.done: asyncio.Future[None] = loop.create_future()
        self.last_heard = loop.time()
        try:
            self.fd: int | None = os.open(
                part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as e:
            raise StorageError(f"cannot write {part}: {e.strerror or e}", path=str(part)) from None

    def on_message(self, message: dict[str, Any] | QuorumKVError) -> None:
        if self.done.done():
            return
        try:
            if isinstance(message, QuorumKVError):
                raise message
            offset, data, last = chunk_from_wire(message)
            if offset != self.checker.received:
                raise ProtocolError(f"the node sent the backup's bytes from {offset}; "
                                    f"{self.checker.received} had arrived")
            self.checker.update(data)
            assert self.fd is not None
            try:
                fsutil.write_all(self.fd, data)
            except OSError as e:
                raise StorageError(f"writing {self.part} failed: {e.strerror or e}",
                                   path=str(self.part)) from None
            self.last_heard = self.loop.time()
            if self.progress is not None:
                # Chunks may come before the first answer is read: the bytes say it too.
                header = self.checker.header
                self.progress(self.checker.received,
                              header.file_size if header is not None else self.total)
            if last:
                self.done.set_result(None)
        except Exception as e:  # the caller's progress callback included: report, not log
            self.done.set_exception(e)

    async def wait(self, stall_timeout: float) -> None:
        """Until the last chunk arrived; Timeout once the node has been silent too long."""
        while not self.done.done():
            left = self.last_heard + stall_timeout - self.loop.time()
            if left <= 0:
                raise Timeout(f"the node sent no part of the backup for {stall_timeout:g}s")
            await asyncio.wait({self.done}, timeout=left)
        self.done.result()

    def publish(self, final: Path) -> None:
        """fsync, rename to ``final``, fsync the directory (blocks: run it in a thread)."""
        assert self.fd is not None
        try:
            fsutil.publish(self.part, final, self.fd)
        except OSError as e:
            raise StorageError(f"saving {final} failed: {e.strerror or e}",
                               path=str(final)) from None
        finally:
            os.close(self.fd)
            self.fd = None

    def discard(self) -> None:
        if not self.done.done():
            self.done.cancel()
        elif not self.done.cancelled():
            self.done.exception()  # seen: the error that matters is the one raised
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.part.unlink(missing_ok=True)


class _NotOffered(Exception):
    """A node could not start a backup (no leader, shutting down, unreachable)."""

    def __init__(self, cause: UnavailableError) -> None:
        super().__init__(cause.message)
        self.cause = cause


async def save_backup(caller: RetryingCaller, path: Path, *, progress: Progress | None = None,
                      stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> BackupInfo:
    """Stream a backup from a node into ``path``; see the module doc. Returns the checked
    backup's header, size and SHA-256.

    A node that cannot start one (it knows no leader, it is stopping, it is
    unreachable) is left for the next endpoint until ``stall_timeout`` has
    passed; once bytes flow, a failure ends the call (the file would have to
    start over anyway).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stall_timeout
    last: UnavailableError | None = None
    while True:
        try:
            return await _save_once(caller, path, progress, stall_timeout, deadline)
        except _NotOffered as refused:
            cause = refused.cause
            last = cause if cause.remote else last
            if loop.time() >= deadline:
                if last is not None and last is not cause:
                    raise Timeout(f"no node offered a backup within {stall_timeout:g}s "
                                  f"(last error: {last.message})") from None
                raise cause from None
            await asyncio.sleep(min(_RETRY_PAUSE, deadline - loop.time()))


async def _save_once(caller: RetryingCaller, path: Path, progress: Progress | None,
                     stall_timeout: float, deadline: float) -> BackupInfo:
    part = path.with_name(path.name + PART_SUFFIX)
    receiver = _Receiver(part, path, progress)
    conn: Connection | None = None
    request_id: int | None = None
    finished = False
    try:
        try:
            async with asyncio.timeout_at(deadline):
                conn = await caller.stream_connection()
                request_id, first = conn.open_stream(SnapshotRequest(), receiver.on_message)
                await conn.drain()
                body = await first
        except TimeoutError:
            raise _NotOffered(Timeout(f"no node offered a backup within {stall_timeout:g}s")
                              ) from None
        except UnavailableError as err:
            if conn is not None:
                # The next attempt goes to the next endpoint.
                await caller.drop_connection(conn)
            finished = True  # nothing of this attempt is left running on the node
            raise _NotOffered(err) from None
        offer = offer_from_wire(body)
        receiver.total = offer.file_size
        if progress is not None:
            progress(receiver.checker.received, offer.file_size)
        await receiver.wait(stall_timeout)
        finished = True
        info = receiver.checker.finish()
        if info.header != offer:
            raise ProtocolError("the backup the node sent is not the one it announced")
        await asyncio.to_thread(receiver.publish, path)
        return info
    except BaseException as err:
        receiver.discard()
        ended_by_node = isinstance(err, QuorumKVError) and err.remote
        if conn is not None and request_id is not None and not finished and not ended_by_node:
            # The node would go on sending on a connection other calls share: end it.
            conn.forget_stream(request_id)
            await caller.drop_connection(conn)
        raise
