"""Changing the membership of a running cluster: add, promote, remove, leave.

The leader carries out every change, one at a time (the core also refuses a
second change while one is uncommitted, thesis §4.1; this layer refuses it
before proposing, so a second request gets ConfChangeInProgress at once and
never waits behind the first). A change is answered once it is applied on
the leader, so the answer's member list already includes it.

Adding a member always adds a *learner*: it receives the log (or a
snapshot) without counting toward any majority, so a slow newcomer cannot
stall commits. A learner added to join (``auto_promote``) is made a voter by
the leader once its log is within ``promote_lag`` entries of the leader's
and it is heard from; until then :meth:`Membership.promotion_blocker` says
why not, and status shows it.

Removing the leader: the leader first hands leadership to the most
caught-up other voter and answers NotLeader naming it, so the client's
retry lands on the new leader, which removes the old one. (If no transfer
succeeds in time the leader removes itself: the core steps it down once
the change commits, §4.2.2.) ``leave`` runs on the leaving node: it hands
over leadership if it has it, asks the leader to remove it, and stops.

Every request that changes the membership must carry the cluster token,
compared in constant time; the token is never logged or echoed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from quorumkv.client.async_client import AsyncClient
from quorumkv.errors import (
    AuthenticationFailed,
    ClusterFull,
    ConfChangeInProgress,
    InvalidArgument,
    InvalidNode,
    LeadershipTransferInProgress,
    LearnerNotReady,
    QuorumNotReached,
)
from quorumkv.kv.members import MemberRecord, encode_member
from quorumkv.raft.entries import ConfChange, ConfChangeType
from quorumkv.raft.progress import ProgressState
from quorumkv.raft.ready import Role
from quorumkv.security.tls import node_client_tls
from quorumkv.server.config import check_name, node_id_for, parse_address

if TYPE_CHECKING:
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

PROMOTE_INTERVAL = 0.5
"""Seconds between the leader's looks at its joining learners."""


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _address(text: str, what: str) -> str:
    try:
        host, port = parse_address(text)
    except InvalidArgument as e:
        raise InvalidNode(f"{what}: {e.message}") from None
    if port == 0:
        raise InvalidNode(f"{what}: port 0 is not an address others can reach")
    return format_address(host, port)


class Membership:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._changing = asyncio.Lock()
        self.leaving: set[int] = set()
        """Members being removed (by this leader) or leaving (this node)."""
        self.promotion_reasons: dict[int, str] = {}
        """Why each joining learner is not promoted yet (the leader's view)."""

    # -- helpers ---------------------------------------------------------------------

    def check_token(self, token: str) -> None:
        expected = self.node.config.cluster_token.encode()
        if not hmac.compare_digest(token.encode(), expected):
            raise AuthenticationFailed("the cluster token is wrong")

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[None]:
        if self._changing.locked():
            raise ConfChangeInProgress("another membership change is in progress; one at a "
                                       "time: retry once it is done")
        async with self._changing:
            yield

    def _require_leader(self) -> None:
        group = self.node.group
        assert group is not None
        if group.raft.leader != self.node.node_id:
            raise self.node.leader_error()

    def _find(self, name: str) -> tuple[int, MemberRecord]:
        node_id = node_id_for(name)
        rec = self.node.registry.get(node_id)
        if rec is None or rec.name != name:
            raise InvalidNode(f"no member named {name!r}")
        return node_id, rec

    def member_wire(self, node_id: int) -> dict[str, Any]:
        conf = self.node.conf
        rec = self.node.registry.get(node_id) or MemberRecord(name=str(node_id),
                                                             peer_address="")
        return {"id": node_id, "name": rec.name, "peer_address": rec.peer_address,
                "client_address": rec.client_address, "voter": node_id in conf.voters,
                "auto_promote": rec.auto_promote and node_id in conf.learners}

    def members_wire(self) -> list[dict[str, Any]]:
        conf = self.node.conf
        return [self.member_wire(i) for i in sorted(conf.voters) + sorted(conf.learners)]

    async def _propose(self, change: ConfChange) -> None:
        group = self.node.group
        assert group is not None
        try:
            await asyncio.wait_for(group.propose_conf_change(change),
                                   self.node.config.request_timeout_s)
        except TimeoutError:
            raise QuorumNotReached(
                "the membership change was proposed but a majority did not confirm it in "
                "time: check `member list` before retrying", outcome="unknown") from None

    def _promoting_voters(self) -> int:
        """Voters now, plus joining learners that will become voters."""
        conf = self.node.conf
        joining = [i for i in conf.learners
                   if (rec := self.node.registry.get(i)) is not None and rec.auto_promote]
        return len(conf.voters) + len(joining)

    # -- the operations ----------------------------------------------------------------

    def list(self) -> dict[str, Any]:
        return {"members": self.members_wire(), "leader": self.node.leader_name(),
                "cluster_id": self.node.cluster_id, "header": self.node.header()}

    async def add(self, name: str, peer_address: str, client_address: str | None, *,
                  learner: bool, token: str) -> dict[str, Any]:
        self.check_token(token)
        try:
            check_name(name)
        except InvalidArgument as e:
            raise InvalidNode(e.message) from None
        peer = _address(peer_address, "peer address")
        client = None if client_address is None else _address(client_address, "client address")
        self._require_leader()
        node_id = node_id_for(name)
        conf = self.node.conf
        existing = self.node.registry.get(node_id)
        if existing is not None and node_id in conf.members():
            if (existing.name == name and existing.peer_address == peer
                    and node_id in conf.learners):
                # The same node asking again (it restarted before it heard the answer).
                return self._added(node_id)
            raise InvalidNode(f"a member named {name!r} already exists")
        for other_id, other in self.node.registry.items():
            if other_id not in conf.members():
                continue
            if other.peer_address == peer:
                raise InvalidNode(f"peer address {peer} is already used by member "
                                  f"{other.name!r}")
            if client is not None and client in (other.client_address, other.peer_address):
                raise InvalidNode(f"client address {client} is already used by member "
                                  f"{other.name!r}")
        if client is not None and client == peer:
            raise InvalidNode("the peer and client addresses must differ")
        if not learner and self._promoting_voters() >= self.node.config.max_voters:
            raise ClusterFull(
                f"the cluster has {self._promoting_voters()} voters (counting joining "
                f"members), the maximum of {self.node.config.max_voters}; remove one first "
                f"or add this one as a learner", max_voters=self.node.config.max_voters)
        rec = MemberRecord(name=name, peer_address=peer, client_address=client,
                           auto_promote=not learner)
        async with self._change():
            log.info("adding %s (%s) as a learner%s", name, peer,
                     "" if learner else "; it will be promoted once caught up")
            await self._propose(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=node_id,
                                           context=encode_member(rec)))
        return self._added(node_id)

    def _added(self, node_id: int) -> dict[str, Any]:
        return {"member": self.member_wire(node_id), "members": self.members_wire(),
                "cluster_id": self.node.cluster_id, "header": self.node.header()}

    async def promote(self, name: str, *, token: str) -> dict[str, Any]:
        self.check_token(token)
        self._require_leader()
        node_id, rec = self._find(name)
        if node_id not in self.node.conf.voters:
            if len(self.node.conf.voters) >= self.node.config.max_voters:
                raise ClusterFull(f"cannot promote {name}: the cluster has the maximum of "
                                  f"{self.node.config.max_voters} voters",
                                  max_voters=self.node.config.max_voters)
            reason = self.promotion_blocker(node_id)
            if reason is not None:
                raise LearnerNotReady(f"cannot promote {name}: {reason}")
            async with self._change():
                await self._promote(node_id, rec)
        return {"member": self.member_wire(node_id), "members": self.members_wire(),
                "header": self.node.header()}

    async def _promote(self, node_id: int, rec: MemberRecord) -> None:
        log.info("promoting %s to voter", rec.name)
        voter = MemberRecord(name=rec.name, peer_address=rec.peer_address,
                             client_address=rec.client_address, auto_promote=False)
        await self._propose(ConfChange(type=ConfChangeType.ADD_VOTER, node_id=node_id,
                                       context=encode_member(voter)))

    def promotion_blocker(self, node_id: int) -> str | None:
        """Why the learner ``node_id`` cannot become a voter now; None if it can."""
        node, group = self.node, self.node.group
        assert group is not None
        raft = group.raft
        if raft.role is not Role.LEADER:
            return "only the leader promotes learners"
        if len(node.conf.voters) >= node.config.max_voters:
            return (f"the cluster has {len(node.conf.voters)} voters, the maximum "
                    f"(max_voters {node.config.max_voters})")
        pr = raft.progress.get(node_id)
        if pr is None:
            return "the leader is not replicating to it yet"
        if pr.state is ProgressState.SNAPSHOT:
            return "it is receiving a snapshot"
        lag = raft.log.last_index - pr.match
        if lag > node.config.promote_lag:
            return (f"it is {lag} entries behind the leader (at most "
                    f"{node.config.promote_lag} allowed)")
        status = node.peer_health(node_id)
        if status != "active":
            return f"it has not been heard from recently (it is {status})"
        return None

    async def move_leader(self, name: str, *, token: str) -> dict[str, Any]:
        """Hand leadership to the voter ``name``; answered once it leads."""
        self.check_token(token)
        self._require_leader()
        node_id, _ = self._find(name)
        if node_id not in self.node.conf.voters:
            raise InvalidNode(f"{name} is not a voter and cannot lead")
        if node_id != self.node.node_id:
            group = self.node.group
            assert group is not None
            log.info("moving leadership to %s", name)
            group.transfer_leadership(node_id)
            cfg = self.node.config
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3 * cfg.election_ticks * cfg.tick_ms / 1000
            while group.raft.leader != node_id:
                if loop.time() >= deadline:
                    raise LeadershipTransferInProgress(
                        f"{name} did not take over in time (it may be behind or "
                        f"unreachable); the leader is {self.node.leader_name() or 'unknown'}")
                await asyncio.sleep(cfg.tick_ms / 1000)
        return {"leader": name, "header": self.node.header()}

    async def remove(self, name: str, *, token: str) -> dict[str, Any]:
        self.check_token(token)
        self._require_leader()
        node_id, _ = self._find(name)
        conf = self.node.conf
        if conf.voters == {node_id}:
            raise InvalidNode(f"{name} is the last voter; it cannot be removed")
        removed = self.member_wire(node_id)
        if node_id == self.node.node_id and await self._hand_over_leadership():
            raise self.node.leader_error()  # the client retries on the new leader
        async with self._change():
            self.leaving.add(node_id)
            try:
                log.info("removing %s from the cluster", name)
                await self._propose(ConfChange(type=ConfChangeType.REMOVE_NODE,
                                               node_id=node_id))
            finally:
                self.leaving.discard(node_id)
        return {"removed": removed, "members": self.members_wire(),
                "header": self.node.header()}

    async def _hand_over_leadership(self) -> bool:
        """Transfer leadership to the most caught-up other voter; True once it moved."""
        group = self.node.group
        assert group is not None
        raft = group.raft
        others = [i for i in self.node.conf.voters if i != self.node.node_id]
        if not others or raft.role is not Role.LEADER:
            return raft.leader not in (0, self.node.node_id)
        best = max(others, key=lambda i: (self.node.peer_health(i) == "active",
                                          raft.progress[i].match if i in raft.progress
                                          else 0))
        log.info("handing leadership over to %s", self.node.name_of(best))
        group.transfer_leadership(best)
        cfg = self.node.config
        deadline = asyncio.get_running_loop().time() + 3 * cfg.election_ticks * cfg.tick_ms / 1000
        while asyncio.get_running_loop().time() < deadline:
            if group.raft.leader not in (0, self.node.node_id):
                return True
            await asyncio.sleep(cfg.tick_ms / 1000)
        return False

    async def leave(self, *, token: str) -> dict[str, Any]:
        """This node leaves the cluster; the caller stops the node afterwards."""
        self.check_token(token)
        node = self.node
        me = node.node_id
        if me not in node.conf.members():
            raise InvalidNode(f"{node.config.name} is not a member of the cluster")
        if node.conf.voters == {me}:
            raise InvalidNode(f"{node.config.name} is the last voter; it cannot leave")
        left = self.member_wire(me)
        self.leaving.add(me)
        try:
            await self._hand_over_leadership()
            group = node.group
            assert group is not None
            if group.raft.leader == me:
                await self.remove(node.config.name, token=token)
            else:
                others = [a for i, r in node.registry.items()
                          if i != me and i in node.conf.voters and (a := r.client_address)]
                if not others:
                    raise InvalidNode("no client address of another voter is known")
                async with AsyncClient(others, timeout=node.config.request_timeout_s * 2,
                                       cluster_id=node.cluster_id,
                                       tls=node_client_tls(node.config)) as client:
                    await client.member_remove(node.config.name, token=token)
        except BaseException:
            self.leaving.discard(me)
            raise
        log.info("%s left the cluster", node.config.name)
        return {"left": left, "header": node.header()}

    # -- the leader's promotion of joining learners ---------------------------------------

    async def promote_caught_up_learners(self) -> None:
        """Run forever: on the leader, make caught-up joining learners voters."""
        while True:
            await asyncio.sleep(PROMOTE_INTERVAL)
            try:
                await self._promote_round()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.info("promoting a learner failed (will retry): %s", e)

    async def _promote_round(self) -> None:
        node = self.node
        group = node.group
        if group is None:
            return
        reasons: dict[int, str] = {}
        ready: list[int] = []
        for i in sorted(node.conf.learners):
            rec = node.registry.get(i)
            if rec is None or not rec.auto_promote:
                continue
            reason = self.promotion_blocker(i)
            if reason is None:
                ready.append(i)
            else:
                reasons[i] = reason
        self.promotion_reasons = reasons
        if ready and not self._changing.locked():
            async with self._change():
                rec = node.registry[ready[0]]
                await self._promote(ready[0], rec)
