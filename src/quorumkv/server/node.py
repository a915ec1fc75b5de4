"""The node process: one member of a quorumkv cluster, wired together and run.

Startup: claim the data directory (refusing one that belongs to another
member or cluster), open the write-ahead log, the snapshot store and the
state machine (restoring the state machine from the latest snapshot if it is
behind it), bootstrap the log if this is a new member of a new cluster, then
start the peer transport, the Raft group's task and the client port.

Shutdown (SIGTERM/SIGINT, or :meth:`Node.stop`): stop accepting client
requests and finish those in flight, stop the group, close the transport and
flush the log and the state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import time
from dataclasses import asdict, replace
from typing import Any

from quorumkv.client import protocol
from quorumkv.errors import (
    InconsistentData,
    InvalidArgument,
    NotLeader,
    QuorumKVError,
    QuorumNotReached,
    ReplicaReadFailed,
    ReplicaWriteFailed,
    Timeout,
)
from quorumkv.kv import Applied, Command, KVStore, Limits, RangeRequest, encode_command
from quorumkv.raft.config import RaftConfig
from quorumkv.raft.messages import InstallSnapshot, Message
from quorumkv.raft.node import RaftNode
from quorumkv.server.client_api import ClientServer
from quorumkv.server.config import NodeConfig, node_id_for
from quorumkv.server.data_dir import DataDir
from quorumkv.server.raft_group import RaftGroup
from quorumkv.server.replicas import ReplicaClients
from quorumkv.server.state_machine_io import restore_snapshot
from quorumkv.storage import SnapshotStore, WriteAheadLog
from quorumkv.transport.peers import PeerTransport

log = logging.getLogger(__name__)

WRITE_LEVELS = ("one", "quorum", "all")
READ_LEVELS = ("one", "session", "quorum", "all")


def _stamp(cmd: Command, timestamp: int) -> Command:
    """The leader's clock at proposal: the state machine never reads a clock itself."""
    return replace(cmd, timestamp=timestamp)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.names = {node_id_for(n): n for n in config.initial_cluster}
        self.names.setdefault(self.node_id, config.name)
        self.data = DataDir(config.data_dir)
        self.limits = Limits(max_key_size=config.max_key_bytes,
                             max_value_size=config.max_value_bytes)
        self._stopped = asyncio.Event()
        self._started = False
        self.group: RaftGroup | None = None
        self.transport: Any = None
        self.client_server: Any = None
        self.wal: WriteAheadLog | None = None
        self.kv: KVStore | None = None
        self.replicas = ReplicaClients(max_frame=config.max_request_bytes)

    # -- lifecycle -------------------------------------------------------------------

    def _open_storage(self) -> tuple[WriteAheadLog, KVStore, SnapshotStore]:
        cfg = self.config
        new = self.data.claim(name=cfg.name, node_id=self.node_id, cluster_id=cfg.cluster_id)
        for d in (self.data.wal, self.data.snap, self.data.kv, self.data.scratch):
            d.mkdir(parents=True, exist_ok=True)
        wal = WriteAheadLog.open(self.data.wal)
        snapshots = SnapshotStore(self.data.snap)
        kv = KVStore.open(self.data.kv)
        latest = snapshots.latest()
        if latest is not None and kv.applied_index < latest.index:
            log.info("state machine at %d is behind snapshot %d: restoring it",
                     kv.applied_index, latest.index)
            restore_snapshot(kv, snapshots, latest, self.data.scratch)
        if new or (wal.last_index == 0 and wal.recovered.snapshot is None
                   and wal.recovered.hard_state.term == 0):
            if not cfg.initial_cluster:
                raise InvalidArgument("a new member needs --initial-cluster (joining an "
                                      "existing cluster is not built yet)")
            ids = [node_id_for(n) for n in cfg.initial_cluster]
            contexts = {node_id_for(n): f"{n}={h}:{p}".encode()
                        for n, (h, p) in cfg.initial_cluster.items()}
            hs, entries = RaftNode.bootstrap_log(ids, contexts)
            wal.append(entries)
            wal.save_hard_state(hs)
            wal.sync()
            wal.close()
            wal = WriteAheadLog.open(self.data.wal)
            log.info("bootstrapped a new cluster of %d members", len(ids))
        return wal, kv, snapshots

    async def start(self) -> None:
        cfg = self.config
        wal, kv, snapshots = await asyncio.to_thread(self._open_storage)
        self.wal, self.kv = wal, kv
        self.transport = PeerTransport(
            node_id=self.node_id, listen_host=cfg.peer_host, listen_port=cfg.peer_port,
            on_message=self._on_peer_message, on_snapshot=self._on_peer_snapshot,
            snapshot_store=snapshots, cluster_id=cfg.cluster_id)
        for name, (host, port) in cfg.initial_cluster.items():
            if name != cfg.name:
                self.transport.set_peer(node_id_for(name), host, port)
        raft_config = RaftConfig(id=self.node_id, election_tick=cfg.election_ticks,
                                 heartbeat_tick=cfg.heartbeat_ticks)
        self.group = RaftGroup(node_id=self.node_id, group_id=0, raft_config=raft_config,
                               wal=wal, kv=kv, snapshots=snapshots, transport=self.transport,
                               tick_seconds=cfg.tick_ms / 1000,
                               snapshot_threshold=cfg.snapshot_threshold,
                               scratch_dir=self.data.scratch)
        await self.transport.start()
        self.client_server = ClientServer(self, host=cfg.client_host, port=cfg.client_port,
                                          max_frame=cfg.max_request_bytes, limits=self.limits)
        await self.client_server.start()
        self._started = True
        log.info("node %s (id %d) serving clients on %s:%d, peers on %s:%d", cfg.name,
                 self.node_id, cfg.client_host, self.client_server.port, cfg.peer_host,
                 self.transport.port)

    async def serve(self) -> None:
        """Run until stop() or a termination signal; then shut down cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        assert self.group is not None
        group_task = asyncio.create_task(self.group.run(), name="raft-group-0")
        stop_task = asyncio.create_task(self._stopped.wait())
        done, _ = await asyncio.wait({group_task, stop_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        if group_task in done:
            stop_task.cancel()
            group_task.result()  # the group died: re-raise its error
        await self._shutdown(group_task)

    def stop(self) -> None:
        self._stopped.set()

    async def _shutdown(self, group_task: asyncio.Task[None]) -> None:
        log.info("shutting down: finishing in-flight requests")
        if self.client_server is not None:
            await self.client_server.close()
        assert self.group is not None
        self.group.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await group_task
        await self.group.close()
        if self.transport is not None:
            await self.transport.close()
        if self.wal is not None:
            await asyncio.to_thread(self.wal.close)
        await self.replicas.close()
        if self.kv is not None:
            await asyncio.to_thread(self.kv.close)
        log.info("stopped")

    # -- transport callbacks ---------------------------------------------------------

    def _on_peer_message(self, m: Message) -> None:
        if self.group is not None:
            self.group.deliver(m)

    def _on_peer_snapshot(self, m: InstallSnapshot, *_: Any) -> None:
        if self.group is not None:
            self.group.deliver_snapshot(m)

    # -- the client service (server/client_api.KVService) -----------------------------

    def _leader_error(self) -> NotLeader:
        assert self.group is not None
        leader = self.group.raft.leader
        name = self.names.get(leader)
        address = self.config.client_addresses.get(name or "") if name else None
        return NotLeader(f"not the leader; the leader is {name or 'unknown'}",
                         leader=leader or None, leader_name=name, leader_address=address)

    def _header(self) -> dict[str, Any]:
        assert self.group is not None and self.kv is not None
        return {"revision": self.kv.revision, "raft_term": self.group.raft.term,
                "member": self.config.name, "applied_index": self.kv.applied_index}

    async def write(self, cmd: Command, *, consistency: str, client_id: int,
                    seq: int) -> dict[str, Any]:
        assert self.group is not None
        if consistency not in WRITE_LEVELS:
            raise InvalidArgument(f"unknown write consistency {consistency!r}")
        if self.group.raft.leader != self.node_id:
            raise self._leader_error()
        # With a client_id the entry is a Session: the state machine answers a
        # retry of (client_id, seq), even one sent to a later leader, with the
        # first attempt's outcome instead of applying it again (thesis §6.3).
        data = encode_command(_stamp(cmd, time.time_ns()), client_id=client_id, seq=seq)
        timeout = self.config.request_timeout_s
        try:
            if consistency == "one":
                index = await asyncio.wait_for(self.group.propose(data, durable_only=True),
                                               timeout)
                assert isinstance(index, int)
                return protocol.durable_result(index, self._header())
            outcome = await asyncio.wait_for(self.group.propose(data), timeout)
        except TimeoutError:
            raise QuorumNotReached(
                "the write was proposed but a majority did not confirm it in time: its "
                "outcome is unknown (retrying with the same client id and seq is safe)",
                outcome="unknown") from None
        assert isinstance(outcome, Applied)
        if consistency == "all":
            await self._confirm_on_all(outcome)
        return protocol.write_result(outcome, self._header())

    async def range(self, req: RangeRequest, *, consistency: str,
                    min_revision: int, min_index: int = 0) -> dict[str, Any]:
        assert self.group is not None and self.kv is not None
        if consistency not in READ_LEVELS:
            raise InvalidArgument(f"unknown read consistency {consistency!r}")
        timeout = self.config.request_timeout_s
        if consistency == "all":
            return await self._read_all(req)
        try:
            if min_index:
                await asyncio.wait_for(self.group.wait_applied(min_index), timeout)
            if consistency == "quorum":
                index = await asyncio.wait_for(self.group.read_index(), timeout)
                await asyncio.wait_for(self.group.wait_applied(index), timeout)
            elif consistency == "session":
                await asyncio.wait_for(self._wait_revision(min_revision), timeout)
        except TimeoutError:
            if consistency == "quorum":
                raise QuorumNotReached("a majority did not confirm the read index in time"
                                       ) from None
            raise Timeout(f"a {consistency} read could not be served in time") from None
        result = await asyncio.to_thread(self.kv.range, req)
        return protocol.range_result(result, self._header())

    def _other_voters(self) -> dict[str, str | None]:
        """Every other voter's name and client address (None if unknown)."""
        assert self.group is not None
        out: dict[str, str | None] = {}
        for member_id in self.group.raft.conf.voters:
            if member_id == self.node_id:
                continue
            name = self.names.get(member_id, str(member_id))
            out[name] = self.config.client_addresses.get(name)
        return out

    async def _read_all(self, req: RangeRequest) -> dict[str, Any]:
        """Every voter answers at one read index and one revision; any difference is an alarm."""
        assert self.group is not None and self.kv is not None
        if self.group.raft.leader != self.node_id:
            raise self._leader_error()
        timeout = self.config.request_timeout_s
        try:
            index = await asyncio.wait_for(self.group.read_index(), timeout)
            await asyncio.wait_for(self.group.wait_applied(index), timeout)
        except TimeoutError:
            raise Timeout("an 'all' read could not be confirmed in time") from None
        # Pin the revision so replicas that applied later writes still answer
        # for the same point in history.
        pinned = replace(req, revision=req.revision or self.kv.revision)
        mine = protocol.range_result(await asyncio.to_thread(self.kv.range, pinned),
                                     self._header())
        answers = await self.replicas.read(self._other_voters(), pinned, index, timeout)
        failed = {n: a for n, a in answers.items() if isinstance(a, QuorumKVError)}
        if failed:
            raise ReplicaReadFailed(
                "not every voter answered the 'all' read: " + "; ".join(
                    f"{n}: {e.message}" for n, e in sorted(failed.items())),
                members=sorted(failed))
        def body(result: dict[str, Any]) -> tuple[Any, ...]:
            return (result.get("kvs"), result.get("count"), result.get("more"))
        differing = sorted(n for n, a in answers.items()
                           if isinstance(a, dict) and body(a) != body(mine))
        if differing:
            raise InconsistentData(
                f"replicas disagree at revision {pinned.revision}: {', '.join(differing)} "
                f"answered differently from {self.config.name}", members=differing,
                revision=pinned.revision)
        return mine

    async def wait_applied(self, index: int) -> dict[str, Any]:
        assert self.group is not None
        try:
            await asyncio.wait_for(self.group.wait_applied(index),
                                   self.config.request_timeout_s)
        except TimeoutError:
            raise Timeout(f"index {index} was not applied here in time") from None
        return {"header": self._header()}

    async def _confirm_on_all(self, outcome: Applied) -> None:
        """An 'all' write: the entry is committed; wait until every voter has applied it."""
        answers = await self.replicas.wait_applied(
            self._other_voters(), outcome.index, self.config.request_timeout_s)
        failed = {n: a for n, a in answers.items() if isinstance(a, QuorumKVError)}
        if failed:
            raise ReplicaWriteFailed(
                f"the write IS committed (log index {outcome.index}) but not every voter "
                f"confirmed applying it: " + "; ".join(
                    f"{n}: {e.message}" for n, e in sorted(failed.items())),
                index=outcome.index, members=sorted(failed))

    async def _wait_revision(self, revision: int) -> None:
        assert self.group is not None and self.kv is not None
        while self.kv.revision < revision:
            await self.group.wait_applied(self.kv.applied_index + 1)

    async def status(self) -> dict[str, Any]:
        assert self.group is not None
        st = self.group.status()
        members = []
        for member_id in st.voters + st.learners:
            name = self.names.get(member_id, str(member_id))
            entry: dict[str, Any] = {"id": member_id, "name": name,
                                     "voter": member_id in st.voters,
                                     "client_address": self.config.client_addresses.get(name)}
            if member_id in st.progress:
                entry.update(st.progress[member_id])
            members.append(entry)
        node = asdict(st) | {"name": self.config.name}
        node["progress"] = {str(k): v for k, v in st.progress.items()}
        return {"node": node,
                "leader": self.names.get(st.leader), "members": members,
                "header": self._header()}

    def hello(self) -> dict[str, Any]:
        return {"name": self.config.name, "id": self.node_id,
                "cluster_id": self.config.cluster_id, "protocol": 1}


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until it is told to stop."""
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        uvloop = None
    if uvloop is not None:
        uvloop.install()
    asyncio.run(Node(config).serve())
