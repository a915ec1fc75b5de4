"""Every member's health as the others see it, on a real three-node cluster.

Each node runs a phi-accrual failure detector fed by every frame its peers
send: Raft traffic between the leader and its followers, health pings
between followers (which exchange no Raft messages). Status reports each
member's "status" (active / inactive / failed / joining / leaving), "phi"
and "last_seen" as the answering node sees it, and on a follower also the
leader's view ("leader_view"), where replication lag is known.

A follower frozen with SIGSTOP keeps its sockets open but sends nothing, so
only the detector can tell: it must be reported inactive or failed, then
failed, by the leader and by the other follower, and active again after
SIGCONT. Times of the transitions are recorded and printed, never asserted;
every wait polls with a generous deadline.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError
from quorumkv.server.config import NodeConfig

pytestmark = pytest.mark.timeout(400)

DEADLINE = 60.0
NAMES = ("n1", "n2", "n3")
HEALTH = {"active", "inactive", "failed"}
QUIET_BEFORE_PHI_IS_MONOTONE = 1.0
"""Seconds of silence after which no frame the frozen node sent before SIGSTOP can
still be on its way: from then on its phi and last_seen only grow."""


def _default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(NodeConfig) if f.name == name)


SUSPECT_PHI: float = _default("suspect_phi")
FAILED_PHI: float = _default("failed_phi")
FAILED_AFTER_S: float = _default("failed_after_s")


def _by_name(members: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in members}


def _status(node: NodeProcess, *, local: bool = True) -> dict[str, Any]:
    with Client([node.client_address], timeout=5.0) as c:
        return c.status(local=local)


def _view(node: NodeProcess) -> dict[str, dict[str, Any]]:
    """Every member as ``node`` sees it, by name."""
    return _by_name(_status(node)["members"])


def _wait_for(what: str, probe: Callable[[], bool], deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            if probe():
                return
        except QuorumKVError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"timed out after {deadline} s waiting for {what} "
                         f"(last error: {last!r})")


def _all_active(node: NodeProcess) -> bool:
    view = _view(node)
    return sorted(view) == list(NAMES) and all(m["status"] == "active" for m in view.values())


def _leader(cluster: Cluster, exclude: NodeProcess | None = None) -> NodeProcess:
    """The node that says it leads, asked of every node but ``exclude`` (a frozen node
    cannot answer)."""
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        for n in cluster.nodes:
            if n is exclude:
                continue
            try:
                st = _status(n)
            except QuorumKVError:
                continue
            if st["node"]["role"] == "leader":
                return n
        time.sleep(0.1)
    raise AssertionError(f"no leader within {DEADLINE} s")


def test_every_member_is_active_from_the_leader_and_a_follower(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        leader = _leader(cluster)
        follower = next(n for n in cluster.nodes if n is not leader)
        _wait_for("all active as the leader sees it", lambda: _all_active(leader))
        _wait_for("all active as a follower sees it", lambda: _all_active(follower))

        # Detector fields: none for oneself, a number for every peer heard from.
        for who in (leader, follower):
            view = _view(who)
            for name, m in view.items():
                if name == who.name:
                    assert m["phi"] is None and m["last_seen"] == 0.0, m
                else:
                    assert isinstance(m["phi"], float) and m["phi"] < SUSPECT_PHI, m
                    assert isinstance(m["last_seen"], float) and m["last_seen"] >= 0, m
            roles = {name: m["role"] for name, m in view.items()}
            assert roles == {n: "leader" if n == leader.name else "follower" for n in NAMES}

        # On a follower: its own view has no lag (only the leader knows it); the
        # leader's view comes along, is the leader's list, and has every lag.
        def follower_has_leader_view() -> bool:
            st = _status(follower, local=False)
            lv = st["leader_view"]
            if lv is None:
                return False
            assert st["leader_view_error"] is None
            assert lv["name"] == leader.name == st["leader"]
            members = _by_name(lv["members"])
            assert sorted(members) == list(NAMES)
            for name, m in members.items():
                assert type(m["lag"]) is int and m["lag"] >= 0, m
                assert m["voter"] is True, m
                if name == leader.name:
                    assert m["lag"] == 0 and m["role"] == "leader", m
            assert all(m["lag"] is None for m in st["members"]), st["members"]
            # The same list the leader reports about itself.
            own = _by_name(_status(leader)["members"])
            assert ({n: (m["id"], m["role"], m["voter"]) for n, m in members.items()}
                    == {n: (m["id"], m["role"], m["voter"]) for n, m in own.items()})
            return all(m["status"] == "active" for m in members.values())

        _wait_for("a follower's status to carry the leader's view", follower_has_leader_view)

        # The leader's own status: lag is known there, and leader_view is itself.
        st = _status(leader, local=False)
        assert st["leader_view"]["name"] == leader.name
        assert all(type(m["lag"]) is int for m in st["members"]), st["members"]


@dataclasses.dataclass
class Watch:
    """What one observer reported about the frozen member, poll by poll."""

    observer: str
    first: dict[str, float] = dataclasses.field(default_factory=dict)
    """Seconds after SIGSTOP (or SIGCONT) at which each status was first reported."""
    samples: list[tuple[float, str, float | None, float | None]] = dataclasses.field(
        default_factory=list)
    """(seconds since SIGSTOP, status, phi, last_seen)."""

    def record(self, since: float, member: dict[str, Any]) -> str:
        status = str(member["status"])
        self.first.setdefault(status, since)
        self.samples.append((since, status, member["phi"], member["last_seen"]))
        return status


def _check_paused_samples(watch: Watch, phi_before: float) -> None:
    statuses = [s for _, s, _, _ in watch.samples]
    assert set(statuses) <= HEALTH, statuses
    assert "failed" in statuses, statuses
    # Once failed, a silent member stays failed: nothing can make it look alive.
    first_failed = statuses.index("failed")
    assert all(s == "failed" for s in statuses[first_failed:]), statuses
    # Its phi grows: from below the suspect threshold to above it, and without ever
    # dropping once the frozen node's last frames have surely arrived.
    phis = [(seen, phi) for _, _, phi, seen in watch.samples
            if seen is not None and seen >= QUIET_BEFORE_PHI_IS_MONOTONE]
    assert phis, watch.samples
    assert all(p is not None for _, p in phis), watch.samples
    values = [p for _, p in phis if p is not None]
    assert values == sorted(values), watch.samples
    assert [s for s, _ in phis] == sorted(s for s, _ in phis), watch.samples
    assert phi_before < SUSPECT_PHI <= values[-1], (phi_before, watch.samples)
    # Failed means phi above the failure threshold or silent for failed_after_s.
    _, _, phi, seen = watch.samples[first_failed]
    assert phi is not None and seen is not None
    # (Status and phi are read microseconds apart, and phi is rounded: allow for it.)
    assert phi >= FAILED_PHI - 0.5 or seen >= FAILED_AFTER_S - 0.5, watch.samples[first_failed]


def test_a_frozen_follower_is_failed_for_leader_and_follower_then_active_again(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        leader = _leader(cluster)
        frozen, other = (n for n in cluster.nodes if n is not leader)
        for observer in (leader, other, frozen):
            _wait_for(f"all active as {observer.name} sees it",
                      functools.partial(_all_active, observer))
        phi_before: dict[str, float] = {}
        for observer in (leader, other):
            member = _view(observer)[frozen.name]
            phi_before[observer.name] = member["phi"]
            assert member["status"] == "active", member
            assert member["phi"] is not None and member["phi"] < SUSPECT_PHI, member

        paused = {o.name: Watch(o.name) for o in (leader, other)}
        resumed = {o.name: Watch(o.name) for o in (leader, other)}
        frozen.pause()
        try:
            stopped_at = time.monotonic()
            end = stopped_at + DEADLINE
            while time.monotonic() < end:
                for observer in (leader, other):
                    try:
                        view = _view(observer)
                    except QuorumKVError:
                        continue
                    paused[observer.name].record(time.monotonic() - stopped_at,
                                                 view[frozen.name])
                if all(w.samples and w.samples[-1][1] == "failed" for w in paused.values()):
                    break
                time.sleep(0.2)
        finally:
            frozen.resume()
        resumed_at = time.monotonic()

        for observer in (leader, other):
            watch = paused[observer.name]
            print(f"{observer.name} saw frozen {frozen.name} first as "
                  f"{ {s: round(t, 2) for s, t in watch.first.items()} } s after SIGSTOP")
            _check_paused_samples(watch, phi_before[observer.name])

        # After SIGCONT: active again for both, and the revived node sees everyone.
        def active_again() -> bool:
            done = True
            for observer in (leader, other):
                member = _view(observer)[frozen.name]
                status = resumed[observer.name].record(time.monotonic() - resumed_at, member)
                done = done and status == "active"
            return done

        _wait_for(f"{frozen.name} active again for {leader.name} and {other.name}",
                  active_again)
        _wait_for(f"all active as {frozen.name} sees it", lambda: _all_active(frozen))
        for observer in (leader, other):
            watch = resumed[observer.name]
            print(f"{observer.name} saw {frozen.name} active again "
                  f"{watch.first['active']:.2f} s after SIGCONT")
            assert set(s for _, s, _, _ in watch.samples) <= HEALTH, watch.samples
            _, _, phi, _ = watch.samples[-1]
            assert phi is not None and phi < SUSPECT_PHI, watch.samples[-1]
