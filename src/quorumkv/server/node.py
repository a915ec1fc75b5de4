"""The node process: one member of a quorumkv cluster, wired together and run.

Startup: with ``--join`` and an empty data directory, join the running
cluster first (join.py). Claim the data directory (refusing one that
belongs to another member or cluster, or to a removed member), open the
write-ahead log, the snapshot store and the state machine (restoring the
state machine from the latest snapshot if it is behind it), bootstrap the
log if this is a new member of a new cluster, then start the peer
transport, the Raft group's task and the client port.

Peers. Where the other members are comes from the member registry the
state machine keeps (kv/members.py), falling back to the initial cluster
or, for a member that joined, to the members it was told of at joining.
After every applied membership change the transport's peers are set to
the configuration's members; a node that applies its own removal marks its
data directory removed and stops.

Health. Every frame from a peer is a heartbeat for the phi-accrual
failure detector (cluster/failure_detector.py); a direction that carries
no Raft traffic (followers to each other) gets a health ping every
``health_interval_ms``. Status reports every member's health, role, phi,
silence and replication lag as this node sees it and as the leader does.

Shutdown (SIGTERM/SIGINT, or :meth:`Node.stop`): with
``leave_on_shutdown``, leave the cluster first; then stop accepting client
requests and finish those in flight, stop the group, close the transport and
flush the log and the state machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Collection
from dataclasses import asdict, replace
from typing import TYPE_CHECKING, Any

from quorumkv import event_loop
from quorumkv.client import protocol
from quorumkv.client.coordination_wire import WatchRequest
from quorumkv.client.protocol import MemberListRequest, StatusRequest
from quorumkv.client.snapshot import offer_to_wire
from quorumkv.cluster.failure_detector import DetectorConfig, FailureDetector, Health
from quorumkv.errors import (
    InconsistentData,
    InvalidArgument,
    NotLeader,
    QuorumKVError,
    QuorumNotReached,
    ReplicaReadFailed,
    ReplicaWriteFailed,
    ResourceExhausted,
    StorageError,
    Timeout,
)
from quorumkv.kv import Applied, Command, KVStore, Limits, RangeRequest, encode_command
from quorumkv.kv.commands import Authorized
from quorumkv.kv.members import MemberRecord, encode_member
from quorumkv.raft.config import RaftConfig
from quorumkv.raft.entries import ConfState
from quorumkv.raft.messages import InstallSnapshot, Message
from quorumkv.raft.node import RaftNode
from quorumkv.security.tls import CertReloader, node_client_tls, peer_contexts, server_context
from quorumkv.server import events as ev
from quorumkv.server import gc_tuning
from quorumkv.server.auth import AuthService
from quorumkv.server.backup import MAX_CONCURRENT as MAX_CONCURRENT_BACKUPS
from quorumkv.server.backup import BackupSource, discard_backup_copies, prepare_backup
from quorumkv.server.client_api import ClientLimits, ClientServer
from quorumkv.server.client_auth import ClientAuth
from quorumkv.server.config import NodeConfig, node_id_for, parse_address
from quorumkv.server.data_dir import DataDir
from quorumkv.server.http_server import HttpServer
from quorumkv.server.join import join_cluster
from quorumkv.server.leases import LeaseManager
from quorumkv.server.member_status import member_statuses
from quorumkv.server.membership import Membership
from quorumkv.server.metrics import NodeMetrics
from quorumkv.server.raft_group import RaftGroup
from quorumkv.server.replicas import ReplicaClients
from quorumkv.server.state_machine_io import restore_snapshot
from quorumkv.server.watches import WatchHub, WatchStream
from quorumkv.storage import SnapshotStore, WriteAheadLog
from quorumkv.transport.peers import PeerTransport

if TYPE_CHECKING:
    from quorumkv.etcd.server import EtcdServer

log = logging.getLogger(__name__)

WRITE_LEVELS = ("one", "quorum", "all")
READ_LEVELS = ("one", "session", "quorum", "all")
LOOP_LAG_PROBE_S = 0.25
"""How often the event loop's lag is sampled (quorumkv_event_loop_lag_seconds)."""


def _stamp(cmd: Command, timestamp: int) -> Command:
    """The leader's clock at proposal: the state machine never reads a clock itself."""
    if isinstance(cmd, Authorized):
        raise InvalidArgument("the node authorizes a write itself")
    return replace(cmd, timestamp=timestamp)


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.cluster_id = config.cluster_id
        """Known once the data directory is claimed (a joined member learns it there)."""
        self.registry: dict[int, MemberRecord] = {}
        """Every member's record: the replicated registry over the start-up fallback."""
        self._fallback: dict[int, MemberRecord] = {}
        self.conf = ConfState()
        """The applied configuration."""
        self._was_member = False
        self.removed = False
        self.membership = Membership(self)
        self.leases = LeaseManager(
            self, min_ttl=2 * config.election_ticks * config.tick_ms / 1000)
        self.watches = WatchHub(self._store, max_buffered=config.watch_buffer_events,
                                progress_interval=config.watch_progress_s, header=self.header,
                                max_watches=config.max_watches,
                                max_per_owner=config.max_watches_per_connection)
        self.detector = FailureDetector(DetectorConfig(
            suspect_phi=config.suspect_phi, failed_phi=config.failed_phi,
            max_silence=config.failed_after_s, acceptable_pause=config.acceptable_pause_s,
            min_std=config.min_heartbeat_std_s))
        self._known_since: dict[int, float] = {}
        """When each member first appeared here: a grace period before it is "failed"
        for never having been heard from."""
        self._tasks: list[asyncio.Task[None]] = []
        self.data = DataDir(config.data_dir)
        self.limits = Limits(max_key_size=config.max_key_bytes,
                             max_value_size=config.max_value_bytes,
                             max_txn_ops=config.max_txn_ops)
        self._stopped = asyncio.Event()
        self._leaving_task: asyncio.Task[None] | None = None
        self.started = False
        """The node served (its storage opened and its ports listened)."""
        self.group: RaftGroup | None = None
        self.transport: Any = None
        self.client_server: Any = None
        self.http_server: HttpServer | None = None
        self.etcd_server: EtcdServer | None = None
        self.wal: WriteAheadLog | None = None
        self.kv: KVStore | None = None
        self.replicas = ReplicaClients(max_frame=config.max_request_bytes,
                                       tls=node_client_tls(config),
                                       cluster_token=config.cluster_token)
        self.certs = CertReloader()
        """Reloads changed certificate files into the contexts of the node's ports."""
        self._backups = 0
        """Backups being prepared or sent (server/backup.py)."""
        self.events = ev.EventFeed()
        """What happened to this node (elections, membership, snapshots, peers' health)."""
        self.auth = AuthService(self)
        """Sign-ins, tokens and permission checks (server/auth.py)."""
        self.metrics = NodeMetrics(self)
        self._verdicts: dict[int, str] = {}
        """Each peer's last failure-detector verdict: events are its changes."""

    # -- lifecycle -------------------------------------------------------------------

    def _open_storage(self) -> tuple[WriteAheadLog, KVStore, SnapshotStore]:
        cfg = self.config
        new, info = self.data.claim(name=cfg.name, node_id=self.node_id,
                                    cluster_id=cfg.cluster_id)
        self.cluster_id = int(info["cluster_id"])
        self._fallback = self._fallback_members(info)
        joined = "join_peers" in info
        for d in (self.data.wal, self.data.snap, self.data.kv, self.data.scratch):
            d.mkdir(parents=True, exist_ok=True)
        discard_backup_copies(self.data.scratch)
        wal = WriteAheadLog.open(self.data.wal)
        snapshots = SnapshotStore(self.data.snap)
        kv = KVStore.open(self.data.kv)
        latest = snapshots.latest()
        if latest is not None and kv.applied_index < latest.index:
            log.info("state machine at %d is behind snapshot %d: restoring it",
                     kv.applied_index, latest.index)
            restore_snapshot(kv, snapshots, latest, self.data.scratch)
        if not joined and (new or (wal.last_index == 0 and wal.recovered.snapshot is None
                                   and wal.recovered.hard_state.term == 0)):
            if not cfg.initial_cluster:
                raise InvalidArgument("a new member needs --initial-cluster (to bootstrap "
                                      "a new cluster) or --join (to join a running one)")
            ids = [node_id_for(n) for n in cfg.initial_cluster]
            contexts = {i: encode_member(self._fallback[i]) for i in ids}
            hs, entries = RaftNode.bootstrap_log(ids, contexts)
            wal.append(entries)
            wal.save_hard_state(hs)
            wal.sync()
            wal.close()
            wal = WriteAheadLog.open(self.data.wal)
            log.info("bootstrapped a new cluster of %d members", len(ids))
        return wal, kv, snapshots

    def _fallback_members(self, info: dict[str, Any]) -> dict[int, MemberRecord]:
        """Members known before the registry is applied: the initial cluster, or the
        members this node was told of when it joined."""
        cfg = self.config
        out: dict[int, MemberRecord] = {}
        for name, (host, port) in cfg.initial_cluster.items():
            client = cfg.client_address if name == cfg.name else cfg.client_addresses.get(name)
            out[node_id_for(name)] = MemberRecord(name=name, peer_address=f"{host}:{port}",
                                                  client_address=client)
        peers = info.get("join_peers")
        if isinstance(peers, dict):
            for key, value in peers.items():
                if (isinstance(value, list) and len(value) == 3 and key.isdigit()
                        and isinstance(value[0], str) and isinstance(value[1], str)):
                    client = value[2] if isinstance(value[2], str) else None
                    out[int(key)] = MemberRecord(name=value[0], peer_address=value[1],
                                                 client_address=client)
        out.setdefault(self.node_id, MemberRecord(name=cfg.name, peer_address=cfg.peer_address,
                                                  client_address=cfg.client_address))
        return out

    def _refresh_members(self) -> None:
        """Take in an applied membership change: registry, peers, our own removal."""
        assert self.kv is not None
        conf = self.kv.conf_state
        registry = dict(self._fallback)
        for node_id, recorded in self.kv.members().items():
            old = registry.get(node_id)
            if recorded.client_address is None and old is not None and old.name == recorded.name:
                # Records from the first logs carry no client address; the flags may.
                recorded = replace(recorded, client_address=old.client_address)  # noqa: PLW2901
            registry[node_id] = recorded
        old_registry, old_conf = self.registry, self.conf
        self.registry = registry
        self.conf = conf
        # The configuration a node starts from (or bootstraps) is no change to report.
        if old_conf.members() and conf != old_conf:
            self._record_membership(old_conf, conf, old_registry)
        now = asyncio.get_running_loop().time()
        for node_id in conf.members():
            self._known_since.setdefault(node_id, now)
        # Before anything is applied (a joining node), talk to whoever we were told of.
        wanted = conf.members() if conf.members() else frozenset(registry)
        if self.transport is not None:
            for node_id in wanted:
                peer = registry.get(node_id)
                if node_id == self.node_id or peer is None:
                    continue
                try:
                    host, port = parse_address(peer.peer_address)
                except QuorumKVError:
                    log.error("member %s has an unusable peer address %r", peer.name,
                              peer.peer_address)
                    continue
                self.transport.set_peer(node_id, host, port)
            linger = 2 * self.config.election_ticks * self.config.tick_ms / 1000
            for node_id in list(self.transport.stats()):
                if node_id not in wanted:
                    # Not at once: the leader's last heartbeat to a removed member
                    # (raft/membership.py) still has to go out.
                    asyncio.get_running_loop().call_later(linger, self._forget_peer, node_id)
        is_member = self.node_id in conf.members()
        if self._was_member and not is_member and not self.removed:
            self._on_removed()
        self._was_member = is_member

    def _record_membership(self, old: ConfState, new: ConfState,
                           old_registry: dict[int, MemberRecord]) -> None:
        def name(node_id: int) -> str:
            rec = self.registry.get(node_id) or old_registry.get(node_id)
            return rec.name if rec is not None else str(node_id)

        for member in sorted(new.voters - old.voters):
            if member in old.learners:
                self.events.record(ev.MEMBER_PROMOTED, f"{name(member)} promoted to voter",
                                   member=name(member), voters=len(new.voters))
            else:
                self.events.record(ev.MEMBER_ADDED, f"{name(member)} added as a voter",
                                   member=name(member), role="voter", voters=len(new.voters))
        for member in sorted(new.learners - old.learners):
            self.events.record(ev.MEMBER_ADDED, f"{name(member)} added as a learner",
                               member=name(member), role="learner", voters=len(new.voters))
        for member in sorted(old.members() - new.members()):
            self.events.record(ev.MEMBER_REMOVED, f"{name(member)} removed from the cluster",
                               member=name(member), voters=len(new.voters))

    def _check_peer_health(self) -> None:
        """Record each change of a peer's failure-detector verdict."""
        loop_now = asyncio.get_running_loop().time()
        for peer in sorted(self.conf.members()):
            if peer == self.node_id:
                continue
            verdict = self.peer_health(peer)
            if verdict == "inactive" and self.detector.last_seen(peer, loop_now) is None:
                continue  # not heard from yet, still in its grace period: no verdict
            old = self._verdicts.get(peer)
            self._verdicts[peer] = verdict
            if old is None or old == verdict:
                continue
            phi = self.detector.phi(peer, loop_now)
            self.events.record(
                ev.PEER_HEALTH, f"peer {self.name_of(peer)} is {verdict} (was {old})",
                level=logging.INFO if verdict == "active" else logging.WARNING,
                peer=self.name_of(peer), state=verdict, previous_state=old,
                phi=None if phi is None else round(phi, 3))

    def _forget_peer(self, node_id: int) -> None:
        if node_id not in self.conf.members() and self.transport is not None:
            self.transport.remove_peer(node_id)
            self.detector.forget(node_id)
            self.metrics.forget_peer(node_id)
            self._verdicts.pop(node_id, None)
            self._known_since.pop(node_id, None)

    def _on_removed(self) -> None:
        log.warning("this member (%s) was removed from the cluster; stopping",
                    self.config.name)
        self.removed = True
        try:
            self.data.mark_removed()
        except QuorumKVError as e:
            log.error("could not mark the data directory removed: %s", e.message)
        self.stop()

    async def start(self) -> None:
        cfg = self.config
        # First: unreadable certificate files stop the node before it touches anything.
        client_ssl = server_context(cfg)
        peer_ssl = peer_contexts(cfg)
        if client_ssl is not None and cfg.cert_file and cfg.key_file:
            self.certs.watch(cfg.cert_file, cfg.key_file, client_ssl)
        if peer_ssl is not None and cfg.peer_cert_file and cfg.peer_key_file:
            self.certs.watch(cfg.peer_cert_file, cfg.peer_key_file, peer_ssl.server,
                             peer_ssl.client)
        if cfg.join:
            await join_cluster(cfg, self.data)
        wal, kv, snapshots = await asyncio.to_thread(self._open_storage)
        self.wal, self.kv = wal, kv
        self.transport = PeerTransport(
            node_id=self.node_id, listen_host=cfg.peer_host, listen_port=cfg.peer_port,
            on_message=self._on_peer_message, on_snapshot=self._on_peer_snapshot,
            on_arrival=self._on_peer_arrival, snapshot_store=snapshots,
            cluster_id=self.cluster_id,
            server_ssl=peer_ssl.server if peer_ssl else None,
            client_ssl=peer_ssl.client if peer_ssl else None)
        self._refresh_members()
        raft_config = RaftConfig(id=self.node_id, election_tick=cfg.election_ticks,
                                 heartbeat_tick=cfg.heartbeat_ticks,
                                 lease_ticks=cfg.lease_ticks)
        self.group = RaftGroup(node_id=self.node_id, group_id=0, raft_config=raft_config,
                               wal=wal, kv=kv, snapshots=snapshots, transport=self.transport,
                               tick_seconds=cfg.tick_ms / 1000,
                               snapshot_threshold=cfg.snapshot_threshold,
                               scratch_dir=self.data.scratch, events=self.events,
                               metrics=self.metrics, name_of=self.name_of)
        self.group.on_membership_change = self._refresh_members
        self.group.on_events = self.watches.on_applied
        self.group.on_snapshot_installed = self.watches.restart_all
        await self.transport.start()
        self.client_server = ClientServer(self, host=cfg.client_host, port=cfg.client_port,
                                          max_frame=cfg.max_request_bytes, limits=self.limits,
                                          max_connections=cfg.max_client_connections,
                                          ssl=client_ssl,
                                          client_limits=ClientLimits.of(cfg),
                                          frame_timeout=cfg.client_frame_timeout_s,
                                          observe=self.metrics.observe_client_request,
                                          auth=ClientAuth(self.auth, cfg.cluster_token,
                                                         cert_users=cfg.client_cert_auth))
        await self.client_server.start()
        if cfg.http_port is not None:
            self.http_server = HttpServer(self, host=cfg.http_host, port=cfg.http_port,
                                          max_body=cfg.max_http_body_bytes, ssl=client_ssl)
            await self.http_server.start()
        if cfg.etcd_port is not None:
            # Imported here: a node without the etcd port never loads gRPC.
            from quorumkv.etcd.server import EtcdServer  # noqa: PLC0415

            self.etcd_server = EtcdServer(self, cfg.etcd_host, cfg.etcd_port)
            await self.etcd_server.start()
        self.started = True
        client = f"{cfg.client_host}:{self.client_server.port}"
        peer = f"{cfg.peer_host}:{self.transport.port}"
        http = (f"{cfg.http_host}:{self.http_server.port}" if self.http_server is not None
                else None)
        etcd = self.etcd_server.address if self.etcd_server is not None else None
        self.events.record(ev.NODE_STARTED, f"node {cfg.name} (id {self.node_id}) serving "
                           f"clients on {client}, peers on {peer}"
                           + (f", the etcd API on {etcd}" if etcd else ""), name=cfg.name,
                           # As text: 64-bit ids lose digits as JSON numbers in a browser.
                           id=str(self.node_id), cluster_id=str(self.cluster_id),
                           client_address=client, peer_address=peer, http_address=http,
                           etcd_address=etcd)
        if self.http_server is not None:
            log.info("HTTP API, metrics and dashboard on %s://%s:%d/",
                     "https" if client_ssl else "http", cfg.http_host, self.http_server.port)

    async def serve(self) -> None:
        """Run until stop() or a termination signal; then shut down cleanly."""
        await self.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        assert self.group is not None
        group_task = asyncio.create_task(self.group.run(), name="raft-group-0")
        self._tasks = [
            asyncio.create_task(self._ping_idle_peers(), name="health-pings"),
            asyncio.create_task(self._measure_loop_lag(), name="loop-lag"),
            asyncio.create_task(self.membership.promote_caught_up_learners(),
                                name="promote-learners"),
            asyncio.create_task(self._watch_for_removal(), name="removal-watch"),
            asyncio.create_task(self.leases.run(), name="lease-expiry")]
        if self.certs:
            self._tasks.append(asyncio.create_task(self.certs.run(self.config.tls_reload_s),
                                                   name="tls-reload"))
        stop_task = asyncio.create_task(self._stopped.wait())
        done, _ = await asyncio.wait({group_task, stop_task},
                                     return_when=asyncio.FIRST_COMPLETED)
        if group_task in done:
            stop_task.cancel()
            error = group_task.exception()
            log.critical("stopping: %s (nothing more is acknowledged; restart the node once "
                         "the cause is fixed)", error)
            await self._shutdown(group_task, grace=2.0)
            group_task.result()  # exit with the group's error
            return
        await self._shutdown(group_task)

    def stop(self) -> None:
        self._stopped.set()

    def _on_signal(self) -> None:
        if not self.config.leave_on_shutdown or self.removed or self._leaving_task is not None:
            self.stop()
            return
        self._leaving_task = asyncio.get_running_loop().create_task(self._leave_then_stop())

    async def _leave_then_stop(self) -> None:
        try:
            await self.leave(token=self.config.cluster_token)
        except QuorumKVError as e:
            log.error("could not leave the cluster before stopping: %s", e.message)
        self.stop()

    async def leave(self, *, token: str) -> dict[str, Any]:
        result = await self.membership.leave(token=token)
        self.removed = True
        await asyncio.to_thread(self.data.mark_removed)
        # Answer first: the client server waits for in-flight requests when it closes.
        asyncio.get_running_loop().call_soon(self.stop)
        return result

    async def _watch_for_removal(self) -> None:
        """Stop if the cluster removed us while we were away.

        A member removed while it was down (or that missed the leader's last
        heartbeat) never applies its removal: nobody sends it anything any
        more, so it sees no leader. After a long leaderless spell it asks the
        others; if one that knows a leader lists the members without us, we
        were removed.
        """
        cfg = self.config
        patience = max(10.0, 10 * cfg.election_ticks * cfg.tick_ms / 1000)
        leaderless_since: float | None = None
        loop = asyncio.get_running_loop()
        while not self.removed:
            await asyncio.sleep(patience / 4)
            assert self.group is not None
            if self.group.raft.leader:
                leaderless_since = None
                continue
            now = loop.time()
            if leaderless_since is None:
                leaderless_since = now
            if now - leaderless_since < patience:
                continue
            others = {r.name: r.client_address for i, r in self.registry.items()
                      if i != self.node_id}
            answers = await self.replicas.on_each(others, MemberListRequest(), 2.0)
            for name, answer in answers.items():
                if isinstance(answer, QuorumKVError):
                    continue
                if removed_by(name, answer, node_id=self.node_id, cluster_id=self.cluster_id):
                    log.warning("the leader %s does not list us as a member", name)
                    self._on_removed()
                    return
            leaderless_since = now

    async def _measure_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time() + LOOP_LAG_PROBE_S
            await asyncio.sleep(LOOP_LAG_PROBE_S)
            self.metrics.loop_lag.observe(max(0.0, loop.time() - asked))

    async def _ping_idle_peers(self) -> None:
        interval = self.config.health_interval_ms / 1000
        while True:
            await asyncio.sleep(interval / 2)
            if self.transport is not None:
                self.transport.ping_idle(interval)
            try:
                self._check_peer_health()
            except Exception:
                # Reporting must never stop the pings the peers' detectors live on.
                log.exception("checking the peers' health failed")

    async def _shutdown(self, group_task: asyncio.Task[None], *,
                        grace: float | None = None) -> None:
        self.events.record(ev.NODE_STOPPING, f"node {self.config.name} shutting down: "
                           "finishing in-flight requests", name=self.config.name)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.watches.close()
        await self.leases.close()
        if self.http_server is not None:
            await self.http_server.close()
        if self.etcd_server is not None:
            await self.etcd_server.close()
        if self.client_server is not None:
            await self.client_server.close(grace=grace)
        assert self.group is not None
        self.group.stop()
        if not group_task.done():
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

    def _on_peer_arrival(self, sender: int) -> None:
        self.detector.heartbeat(sender, asyncio.get_running_loop().time())

    def _store(self) -> KVStore:
        assert self.kv is not None
        return self.kv

    # -- who is who ----------------------------------------------------------------------

    def name_of(self, node_id: int) -> str:
        rec = self.registry.get(node_id)
        return rec.name if rec is not None else str(node_id)

    def leader_name(self) -> str | None:
        assert self.group is not None
        leader = self.group.raft.leader
        return self.name_of(leader) if leader else None

    def peer_health(self, node_id: int) -> str:
        """active, inactive or failed, as this node's failure detector sees ``node_id``."""
        if node_id == self.node_id:
            return "active"
        now = asyncio.get_running_loop().time()
        if self.detector.last_seen(node_id, now) is None:
            # Not heard from yet: give a peer that is just starting, or us, a moment.
            known = self._known_since.get(node_id, now)
            return "inactive" if now - known < self.config.failed_after_s else "failed"
        return {Health.ACTIVE: "active", Health.INACTIVE: "inactive",
                Health.FAILED: "failed"}[self.detector.health(node_id, now)]

    # -- the client service (server/client_api.KVService) -----------------------------

    def leader_error(self) -> NotLeader:
        assert self.group is not None
        leader = self.group.raft.leader
        rec = self.registry.get(leader) if leader else None
        name = rec.name if rec is not None else None
        address = rec.client_address if rec is not None else None
        return NotLeader(f"not the leader; the leader is {name or 'unknown'}",
                         leader=leader or None, leader_name=name, leader_address=address)

    def header(self) -> dict[str, Any]:
        assert self.group is not None and self.kv is not None
        return {"revision": self.kv.revision, "raft_term": self.group.raft.term,
                "member": self.config.name, "applied_index": self.kv.applied_index}

    async def write(self, cmd: Command, *, consistency: str, client_id: int,
                    seq: int, user: str | None = None) -> dict[str, Any]:
        """Propose a client's ``cmd`` as ``user`` (None: no user signed in), whom the state
        machine checks again when it applies the entry (kv/auth.py)."""
        assert self.group is not None
        if consistency not in WRITE_LEVELS:
            raise InvalidArgument(f"unknown write consistency {consistency!r}")
        if self.group.raft.leader != self.node_id:
            raise self.leader_error()
        # With a client_id the entry is a Session: the state machine answers a
        # retry of (client_id, seq), even one sent to a later leader, with the
        # first attempt's outcome instead of applying it again (thesis §6.3).
        data = encode_command(_stamp(cmd, time.time_ns()), client_id=client_id, seq=seq,
                              user=user)
        timeout = self.config.request_timeout_s
        try:
            # asyncio.timeout rather than wait_for: no extra task per request.
            async with asyncio.timeout(timeout) as deadline:
                if consistency == "one":
                    index = await self.group.propose(data, durable_only=True)
                    assert isinstance(index, int)
                    return protocol.durable_result(index, self.header())
                # The timeout bounds reaching a majority. Once committed the write's
                # outcome is settled, and its apply (seconds, for a delete of a large
                # range) is waited for: "unknown" would then be a needless answer.
                def committed() -> None:
                    # A write that already timed out has left its wait: nothing to extend.
                    with contextlib.suppress(RuntimeError):
                        deadline.reschedule(None)

                outcome = await self.group.propose(data, on_commit=committed)
        except TimeoutError:
            raise QuorumNotReached(
                "the write was proposed but a majority did not confirm it in time: its "
                "outcome is unknown (retrying with the same client id and seq is safe)",
                outcome="unknown") from None
        assert isinstance(outcome, Applied)
        if consistency == "all":
            await self._confirm_on_all(outcome)
        return protocol.write_result(outcome, self.header())

    async def read_barrier(self) -> None:
        """Wait until this node has applied everything committed when it was called (a
        linearizable point, as a quorum read)."""
        assert self.group is not None
        try:
            async with asyncio.timeout(self.config.request_timeout_s):
                await self.group.wait_applied(await self.group.read_index())
        except TimeoutError:
            raise QuorumNotReached("a majority did not confirm the read index in time"
                                   ) from None

    async def range(self, req: RangeRequest, *, consistency: str,
                    min_revision: int, min_index: int = 0) -> dict[str, Any]:
        assert self.group is not None and self.kv is not None
        if consistency not in READ_LEVELS:
            raise InvalidArgument(f"unknown read consistency {consistency!r}")
        timeout = self.config.request_timeout_s
        if consistency == "all":
            return await self._read_all(req)
        try:
            async with asyncio.timeout(timeout):
                if min_index:
                    await self.group.wait_applied(min_index)
                if consistency == "quorum":
                    await self.group.wait_applied(await self.group.read_index())
                elif consistency == "session":
                    await self._wait_revision(min_revision)
        except TimeoutError:
            if consistency == "quorum":
                raise QuorumNotReached("a majority did not confirm the read index in time"
                                       ) from None
            raise Timeout(f"a {consistency} read could not be served in time") from None
        now = self.range_now(req)
        if now is not None:
            return now
        result = await asyncio.to_thread(self.kv.range, req)
        return protocol.range_result(result, self.header())

    def range_now(self, req: RangeRequest) -> dict[str, Any] | None:
        """Read a single key here and now; None for a range (or a store not open), which
        a worker thread reads.

        One key from the mmap'd B+tree takes microseconds: a thread hop would cost more
        than the read. A range counts every key in it, whatever its limit.
        """
        if req.range_end is not None or self.kv is None or self.group is None:
            return None
        return protocol.range_result(self.kv.range(req), self.header())

    def _other_voters(self) -> dict[str, str | None]:
        """Every other voter's name and client address (None if unknown)."""
        assert self.group is not None
        out: dict[str, str | None] = {}
        for member_id in self.group.raft.conf.voters:
            if member_id == self.node_id:
                continue
            rec = self.registry.get(member_id)
            out[self.name_of(member_id)] = rec.client_address if rec is not None else None
        return out

    async def _read_all(self, req: RangeRequest) -> dict[str, Any]:
        """Every voter answers at one read index and one revision; any difference is an alarm."""
        assert self.group is not None and self.kv is not None
        if self.group.raft.leader != self.node_id:
            raise self.leader_error()
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
                                     self.header())
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
        return {"header": self.header()}

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

    async def status(self, *, local: bool = False) -> dict[str, Any]:
        """This node's view of itself and every member; unless ``local``, also the
        leader's view of the members (asked of the leader when it is another node)."""
        assert self.group is not None
        st = self.group.status()
        node = asdict(st) | {"name": self.config.name, "cluster_id": self.cluster_id,
                             "leaving": self.node_id in self.membership.leaving}
        node["progress"] = {str(k): v for k, v in st.progress.items()}
        members = member_statuses(self)
        out: dict[str, Any] = {"node": node, "leader": self.leader_name(), "members": members,
                               "leader_view": None, "leader_view_error": None,
                               "header": self.header()}
        if local:
            return out
        leader = st.leader
        if leader == self.node_id:
            out["leader_view"] = {"name": self.config.name, "members": members, "node": node}
        elif not leader:
            out["leader_view_error"] = "no leader is known"
        else:
            rec = self.registry.get(leader)
            address = rec.client_address if rec is not None else None
            name = self.name_of(leader)
            answer = (await self.replicas.on_each(
                {name: address}, StatusRequest(local=True),
                min(2.0, self.config.request_timeout_s)))[name]
            if isinstance(answer, QuorumKVError):
                out["leader_view_error"] = f"{name}: {answer.message}"
            else:
                out["leader_view"] = {"name": name, "members": answer.get("members"),
                                      "node": answer.get("node")}
        return out

    async def digest(self) -> dict[str, Any]:
        assert self.kv is not None
        kv = self.kv
        applied, revision = kv.applied_index, kv.revision
        digest = await asyncio.to_thread(kv.digest)
        if kv.applied_index != applied:
            # Entries were applied meanwhile: say so rather than mislabel the digest.
            raise Timeout("the state machine changed while it was being digested; retry "
                          "once writes have stopped")
        return {"digest": digest, "applied_index": applied, "revision": revision,
                "header": self.header()}

    async def snapshot(self) -> tuple[dict[str, Any], BackupSource]:
        """A backup of this node's store (server/backup.py): the stream's first answer,
        and the copy to send after it."""
        if self._backups >= MAX_CONCURRENT_BACKUPS:
            raise ResourceExhausted(
                f"this node is already preparing or sending {self._backups} backups, its "
                f"limit (each is a copy of its store on disk); retry once one is done",
                limit=MAX_CONCURRENT_BACKUPS)
        self._backups += 1
        try:
            source = await self._take_backup()
        except BaseException:
            self._backups -= 1
            raise
        source.on_close = self._backup_closed
        return offer_to_wire(source.header, self.header()), source

    def _backup_closed(self) -> None:
        self._backups -= 1

    async def _take_backup(self) -> BackupSource:
        assert self.group is not None and self.kv is not None
        timeout = self.config.request_timeout_s
        # A read index first, as for a quorum read: the copy then holds every write
        # acknowledged before the backup was asked for, whichever member takes it.
        try:
            index = await asyncio.wait_for(self.group.read_index(), timeout)
            await asyncio.wait_for(self.group.wait_applied(index), timeout)
        except TimeoutError:
            raise QuorumNotReached("a majority did not confirm the read index in time; "
                                   "no backup was taken") from None
        copying = asyncio.ensure_future(asyncio.to_thread(
            prepare_backup, self.kv, self.data.scratch, cluster_id=self.cluster_id,
            member=self.config.name))
        try:
            return await asyncio.shield(copying)
        except asyncio.CancelledError:
            # The thread copies on regardless: whatever it makes must not stay on disk.
            copying.add_done_callback(_discard_backup)
            raise

    # -- coordination: watches and leases ----------------------------------------------

    async def watch(self, req: WatchRequest, stream: WatchStream) -> dict[str, Any]:
        return await self.watches.create(req, stream)

    def watch_cancel(self, watch_id: int, owner: object) -> dict[str, Any]:
        if not self.watches.cancel(watch_id, owner):
            raise InvalidArgument(f"no watch {watch_id} on this connection")
        return {"canceled": True, "header": self.header()}

    async def lease_keepalive(self, lease_id: int) -> dict[str, Any]:
        return await self.leases.keepalive(lease_id)

    async def lease_ttl(self, lease_id: int, *, keys: bool) -> dict[str, Any]:
        return await self.leases.time_to_live(lease_id, keys=keys)

    async def lease_list(self) -> dict[str, Any]:
        return await self.leases.list()

    async def leases_granted(self, ids: Collection[int]) -> set[int]:
        kv = self.kv
        if kv is None:
            return set(ids)
        # Up to max_leases_per_connection lookups: off the event loop.
        return await asyncio.to_thread(lambda: {i for i in ids if kv.lease_exists(i)})

    def hello(self) -> dict[str, Any]:
        return {"name": self.config.name, "id": self.node_id,
                "cluster_id": self.cluster_id, "protocol": 1}


def _discard_backup(copying: asyncio.Future[BackupSource]) -> None:
    if not copying.cancelled() and copying.exception() is None:
        copying.result().close_sync()


def removed_by(name: str, answer: dict[str, Any], *, node_id: int, cluster_id: int) -> bool:
    """Whether member ``name``'s member list proves this node was removed.

    Only a leader's own list counts: it holds every configuration change it
    has committed. Any other member may be behind, or just joined and have
    applied nothing yet, and list nobody; believing it would make a healthy
    member that merely lost its leader for a while stop for good.
    """
    listed = answer.get("members")
    if answer.get("leader") != name or answer.get("cluster_id") != cluster_id:
        return False
    if not isinstance(listed, list) or not all(isinstance(m, dict) for m in listed):
        return False
    ids = {m.get("id") for m in listed}
    names = {m.get("name") for m in listed}
    return name in names and node_id not in ids


def _disk_failure(node: Node, err: StorageError) -> bool:
    """Whether ``err`` is the disk failing under a node (worth waiting out), rather than
    a data directory that is wrong (foreign, corrupt), which waiting does not mend."""
    return isinstance(err.__cause__, OSError) or (node.started and not node.removed)


async def serve_until_stopped(config: NodeConfig) -> None:
    """Run a node; if its disk fails, wait and start it again until the disk recovers.

    A node whose disk fails stops serving at once (nothing more is
    acknowledged, see Node.serve) and comes back from what its disk holds
    once it can write again, in this same process: a full disk that is
    cleared needs no operator to restart anything.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    while True:
        node = Node(config)
        try:
            await node.serve()
            return
        except StorageError as e:
            if not _disk_failure(node, e):
                raise
            node.events.record(ev.DISK_FAILED, f"the disk failed ({e.message}); not serving; "
                               f"trying again in {config.storage_retry_s:g}s",
                               level=logging.ERROR, error=e.code,
                               retry_s=config.storage_retry_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), config.storage_retry_s)
            return  # told to stop while waiting


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until it is told to stop."""
    gc_tuning.tune_for_node()
    event_loop.run(serve_until_stopped(config))
