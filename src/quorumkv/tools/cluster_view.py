"""One picture of the cluster, put together from what each member says about itself.

A node's status describes the node (role, term, commit and applied index)
and the membership; only the leader knows how far each follower's log
matches its own. So the view asks any node for the membership, the leader
for replication progress, and every member for its own state, all at once.
A member that does not answer in time is shown as unreachable, not as an
error: status is what an operator runs when something is wrong.

How healthy each member looks (failure-detector status, phi, when it was last
heard from) is the answering node's opinion; lag and what holds back a
joining learner's promotion are the leader's knowledge, so where the answering
node does not know them they come from the leader's own status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from quorumkv.client import AsyncClient, TLSSettings
from quorumkv.errors import QuorumKVError

MEMBER_TIMEOUT = 2.0
"""Seconds to wait for one member; a dead member must not stall the whole picture."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberView:
    name: str
    id: int
    voter: bool
    address: str | None
    reachable: bool
    role: str
    """leader, follower, candidate, pre_candidate, learner, or unreachable."""
    term: int | None = None
    commit: int | None = None
    applied: int | None = None
    revision: int | None = None
    match: int | None = None
    """How much of the leader's log this member is known to hold (leader's view)."""
    error: str | None = None
    status: str | None = None
    """active, inactive, failed, joining or leaving (the answering node's failure detector)."""
    phi: float | None = None
    last_seen: float | None = None
    """Seconds since the answering node last heard from this member."""
    lag: int | None = None
    """Entries behind the leader's log."""
    promotion: str | None = None
    """Why this joining learner has not been promoted to voter yet."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterView:
    leader: str | None
    term: int | None
    members: tuple[MemberView, ...]

    def to_json(self) -> dict[str, Any]:
        return {"leader": self.leader, "term": self.term,
                "members": [m.to_json() for m in self.members]}


async def membership(endpoints: Sequence[str], timeout: float,
                     tls: TLSSettings | None = None) -> dict[str, Any]:
    """The status of whichever node of ``endpoints`` answers first."""
    async with AsyncClient(endpoints, timeout=timeout, tls=tls) as c:
        return await c.status()


async def cluster_view(endpoints: Sequence[str], timeout: float,
                       tls: TLSSettings | None = None) -> ClusterView:
    first = await membership(endpoints, timeout, tls)
    members: list[dict[str, Any]] = list(first.get("members") or [])
    per_member = min(timeout, MEMBER_TIMEOUT)

    async def ask(member: dict[str, Any]) -> dict[str, Any] | QuorumKVError:
        if member.get("name") == first["node"].get("name"):
            return first  # already asked
        address = member.get("client_address")
        if not address:
            return QuorumKVError("no client address known for this member")
        try:
            return await membership([address], per_member, tls)
        except QuorumKVError as err:
            return err

    answers = await asyncio.gather(*(ask(m) for m in members))
    by_name = {m.get("name"): a for m, a in zip(members, answers, strict=True)}
    leader = first.get("leader")
    # The leader's own member list carries the replication progress of everyone.
    leader_status = by_name.get(leader) if leader else None
    progress: dict[str, dict[str, Any]] = {}
    if isinstance(leader_status, dict):
        progress = {str(m.get("name")): m for m in leader_status.get("members") or []}
    views = tuple(_member_view(m, by_name[m.get("name")], progress.get(str(m.get("name"))))
                  for m in members)
    term = leader_status["node"].get("term") if isinstance(leader_status, dict) else None
    return ClusterView(leader=leader, term=term, members=views)


def _number(value: object) -> float | None:
    # The status map is not checked field by field; a table must not crash on a stray value.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _health(member: dict[str, Any], progress: dict[str, Any]) -> dict[str, Any]:
    """The health fields of ``member`` (an entry of the answering node's members)."""
    lag = member.get("lag")
    if lag is None:
        lag = progress.get("lag")
    promotion = member.get("promotion") or progress.get("promotion")
    status = member.get("status")
    return {"status": status if isinstance(status, str) else None,
            "phi": _number(member.get("phi")), "last_seen": _number(member.get("last_seen")),
            "lag": lag if type(lag) is int else None,
            "promotion": promotion if isinstance(promotion, str) else None}


def _member_view(member: dict[str, Any], answer: dict[str, Any] | QuorumKVError,
                 progress: dict[str, Any] | None) -> MemberView:
    common: dict[str, Any] = {
        "name": str(member.get("name")), "id": int(member.get("id") or 0),
        "voter": bool(member.get("voter")), "address": member.get("client_address"),
        "match": (progress or {}).get("match"), **_health(member, progress or {})}
    if isinstance(answer, QuorumKVError):
        return MemberView(**common, reachable=False, role="unreachable", error=answer.message)
    node = answer.get("node") or {}
    header = answer.get("header") or {}
    role = str(node.get("role"))
    if not common["voter"] and role == "follower":
        role = "learner"
    return MemberView(**common, reachable=True, role=role, term=node.get("term"),
                      commit=node.get("commit"), applied=node.get("applied"),
                      revision=header.get("revision"))
