"""etcd's Maintenance service (``/etcdserverpb.Maintenance/*``).

Status: the answering member's Raft state (``raftIndex`` is its commit
index, as etcd's), its leader's id and the size of its LMDB data file
(``dbSize`` and ``dbSizeInUse`` alike: LMDB reuses freed pages in place).
``version`` is the etcd API version quorumkv speaks (its .proto files are
etcd 3.5's), which is what etcd's clients compare against.

Hash and HashKV: the first 32 bits of the member's state digest (the one
``quorumkv check`` compares), so members that applied the same entries
answer the same hash. It covers the whole state at the current revision;
HashKV of an older revision cannot be computed and is refused.

Snapshot: a stream of a quorumkv backup of this member (server/backup.py),
then zero padding and a SHA-256 of all of it, so that its size has the
shape etcdctl checks (512 * n + 32, as etcd's bbolt file and its digest).
What ``etcdctl snapshot save`` writes is therefore a quorumkv backup file
with an etcd trailer, which ``quorumkv snapshot status`` checks and
``quorumkv snapshot restore`` restores (not ``etcdutl``/``etcdctl snapshot
status``: the image inside is LMDB, not bbolt).

Alarm: quorumkv raises no alarms (a full disk fails writes with an error
instead), so the list is empty and deactivating is a no-op; activating one
by hand is refused. Defragment: a no-op; LMDB reuses freed pages, and a
backup is compacted anyway. MoveLeader: quorumkv's leadership transfer,
with the same credential as a membership change (cluster_service.py).

Auth: with auth enabled, Hash, HashKV, Snapshot, Defragment and alarm
changes need the root user, as in etcd; Status and the alarm list need
nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final

from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import EtcdService, unary
from quorumkv.etcd.cluster_service import move_leader
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.header import response_header
from quorumkv.etcd.identity import caller_of
from quorumkv.kv.environment import DATA_FILE
from quorumkv.storage.backup_file import DIGEST_SIZE, etcd_trailer

if TYPE_CHECKING:
    from quorumkv.server.node import Node

ETCD_VERSION: Final = "3.5.0"
"""The etcd release whose API this port speaks (proto/NOTICE)."""
CHUNK_BYTES: Final = 256 * 1024
"""Bytes of the backup per SnapshotResponse."""

NO_ALARMS: Final = ee.RpcError(
    ee.Code.UNIMPLEMENTED, "quorumkv: alarms are not raised by hand (quorumkv has no alarms)")
PAST_HASH: Final = ee.RpcError(
    ee.Code.UNIMPLEMENTED,
    "quorumkv: HashKV hashes the current revision only (give revision 0)")
DOWNGRADE: Final = ee.RpcError(
    ee.Code.UNIMPLEMENTED,
    "quorumkv: cluster version downgrades do not exist (every member speaks one protocol)")


def require_root(node: Node, context: Any) -> None:
    """With auth enabled, etcd's error unless the caller is a user with the role root."""
    if node.auth.enabled:
        node.auth.check_root(caller_of(node, context).user)


def db_size(node: Node) -> int:
    kv = node.kv
    assert kv is not None
    try:
        return (kv.path / DATA_FILE).stat().st_size
    except OSError:
        return 0


def hash32(digest: str) -> int:
    """A uint32 from a hex SHA-256 digest."""
    return int(digest[:8], 16)


class MaintenanceService(EtcdService):
    """The handlers of etcd's Maintenance service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_MaintenanceServicer_to_server(self, server)

    @unary(None)
    async def Status(self, request: Any, context: Any) -> Any:  # noqa: N802 (etcd's name)
        node = self.node
        group = node.group
        assert group is not None
        st = group.status()
        size = db_size(node)
        return etcd_proto().rpc_pb2.StatusResponse(
            header=response_header(node), version=ETCD_VERSION, dbSize=size,
            dbSizeInUse=size, leader=st.leader, raftIndex=st.commit, raftTerm=st.term,
            raftAppliedIndex=st.applied, errors=[] if st.leader else [ee.NO_LEADER.message],
            isLearner=node.node_id in node.conf.learners)

    @unary(None)
    async def Hash(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        require_root(node, context)
        result = await node.digest()
        return etcd_proto().rpc_pb2.HashResponse(header=response_header(node, result),
                                                 hash=hash32(result["digest"]))

    @unary(None)
    async def HashKV(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        require_root(node, context)
        kv = node.kv
        assert kv is not None
        if request.revision > kv.revision:
            raise ee.EtcdError(ee.FUTURE_REV)
        if 0 < request.revision < kv.compact_revision:
            raise ee.EtcdError(ee.COMPACTED)
        result = await node.digest()
        if request.revision not in (0, result["revision"]):
            raise ee.EtcdError(PAST_HASH)
        return etcd_proto().rpc_pb2.HashKVResponse(
            header=response_header(node, result), hash=hash32(result["digest"]),
            compact_revision=kv.compact_revision)

    @unary(None)
    async def Alarm(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        pb = etcd_proto().rpc_pb2
        if request.action == pb.AlarmRequest.ACTIVATE:
            require_root(node, context)
            raise ee.EtcdError(NO_ALARMS)
        if request.action == pb.AlarmRequest.DEACTIVATE:
            require_root(node, context)  # nothing is raised, so nothing to clear
        return pb.AlarmResponse(header=response_header(node), alarms=[])

    @unary(None)
    async def Defragment(self, request: Any, context: Any) -> Any:  # noqa: N802
        require_root(self.node, context)
        return etcd_proto().rpc_pb2.DefragmentResponse(header=response_header(self.node))

    @unary(None)
    async def MoveLeader(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        result = await move_leader(node, context, request.targetID)
        return etcd_proto().rpc_pb2.MoveLeaderResponse(header=response_header(node, result))

    @unary(None)
    async def Downgrade(self, request: Any, context: Any) -> Any:  # noqa: N802
        raise ee.EtcdError(DOWNGRADE)

    async def Snapshot(self, request: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        # A server stream: unary() cannot wrap it, so errors become statuses here.
        node = self.node
        started = time.perf_counter()
        pb = etcd_proto().rpc_pb2
        try:
            require_root(node, context)
            _, source = await node.snapshot()
        except Exception as e:  # every error becomes a status; status_of logs bugs
            error = ee.status_of(e)
            self.observe(None, started, error)
            await context.abort(error.code, error.message)
            return
        failed: ee.RpcError | None = None
        try:
            header = response_header(node)
            size = source.size
            remaining = size + len(etcd_trailer(size, b"")) + DIGEST_SIZE
            outer = hashlib.sha256()
            while blob := await source.read(CHUNK_BYTES):
                outer.update(blob)
                remaining -= len(blob)
                yield pb.SnapshotResponse(header=header, remaining_bytes=remaining, blob=blob)
            # etcd's shape, which etcdctl checks (storage/backup_file.py: the etcd trailer).
            padding = etcd_trailer(size, b"")
            outer.update(padding)
            yield pb.SnapshotResponse(header=header, remaining_bytes=0,
                                      blob=padding + outer.digest())
        except Exception as e:  # answered as a status below; status_of logs bugs
            failed = ee.status_of(e)
        finally:
            await source.close()
        self.observe(None, started, failed)
        if failed is not None:
            await context.abort(failed.code, failed.message)
