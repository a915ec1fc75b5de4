"""Growing, shrinking and repairing a running cluster of real processes.

Every scenario runs while a client writes, then checks the two things that
matter: no acknowledged write was lost, and every member's state machine is
identical (the digest of its data, sessions and member registry, taken at
the same applied index). The membership commands are the ones
docs/operations.md tells operators to run.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError

pytestmark = pytest.mark.timeout(400)


def _wait_until(predicate: Callable[[], object], timeout: float = 90.0,
                what: str = "condition") -> None:
    wait_until(predicate, timeout, what)


def cli(cluster: Cluster, *args: str, endpoints: list[str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    eps = ",".join(endpoints or [n.client_address for n in cluster.nodes if n.running()])
    result = subprocess.run([sys.executable, "-m", "quorumkv.cli", *args, "--endpoints", eps,
                             "--timeout", "30"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


class Writer:
    """Puts distinct keys until stopped; remembers which ones were acknowledged."""

    def __init__(self, endpoints: list[str]) -> None:
        self.endpoints = endpoints
        self.acked: list[bytes] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        with Client(self.endpoints, timeout=30.0) as c:
            while not self._stop.is_set():
                key = f"w/{i:06d}".encode()
                try:
                    c.put(key, b"x" * 64)
                    self.acked.append(key)
                except QuorumKVError:
                    self.failures += 1  # outcome unknown: not counted as acknowledged
                i += 1

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        assert not self._thread.is_alive()

    def wait_for(self, count: int) -> None:
        _wait_until(lambda: len(self.acked) >= count, what=f"{count} acknowledged writes")


@contextmanager
def writing(cluster: Cluster) -> Iterator[Writer]:
    with Writer(cluster.endpoints) as w:
        w.wait_for(20)
        yield w


def members(cluster: Cluster) -> dict[str, bool]:
    """name -> voter, as the leader reports it (any other member may not have applied the
    latest change yet: a member list is served from what the answering node applied)."""
    live = [n for n in cluster.nodes if n.running()]
    with Client([n.client_address for n in live], timeout=10.0) as c:
        leader = c.status()["leader"]
    address = next((n.client_address for n in live if n.name == leader), None)
    with Client([address] if address else [n.client_address for n in live], timeout=10.0) as c:
        return {m.name: m.voter for m in c.member_list()}


def check_no_write_lost_and_replicas_identical(cluster: Cluster, writer: Writer,
                                               names: list[str]) -> None:
    live = [cluster.node(n) for n in names]
    with Client([n.client_address for n in live], timeout=30.0) as c:
        # A quorum write after the writer stopped: every member must apply up to it.
        marker = c.put(b"check/marker", b"end")
        found = c.scan_prefix(b"w/", keys_only=True)
    assert marker.revision > 0
    stored = {kv.key for kv in found.kvs}
    lost = [k for k in writer.acked if k not in stored]
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"

    def digests() -> dict[str, tuple[int, str]]:
        out = {}
        for n in live:
            with Client([n.client_address], timeout=10.0) as one:
                d = one.digest()
                out[n.name] = (d["applied_index"], d["digest"])
        return out

    def settled() -> bool:
        seen = digests()
        return (len({index for index, _ in seen.values()}) == 1
                and len({digest for _, digest in seen.values()}) == 1)

    _wait_until(settled, what=f"identical digests on {names} ({digests()!r})")


def join(cluster: Cluster, tmp_path: Path, name: str, *, extra: list[str] | None = None,
         ) -> NodeProcess:
    node = cluster.add_joiner(tmp_path, name, extra=extra)
    node.start()
    return node


def wait_voter(cluster: Cluster, name: str) -> None:
    _wait_until(lambda: members(cluster).get(name) is True, what=f"{name} to become a voter")


def test_grow_three_to_five_then_shrink_back_while_writing(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with writing(cluster) as writer:
            n4 = join(cluster, tmp_path, "n4")
            wait_voter(cluster, "n4")
            n5 = join(cluster, tmp_path, "n5")
            wait_voter(cluster, "n5")
            assert members(cluster) == {f"n{i}": True for i in range(1, 6)}
            done = len(writer.acked)
            writer.wait_for(done + 20)  # still writing with five voters
            # Shrink: remove one member from outside, let another leave by itself.
            cli(cluster, "member", "remove", "n4")
            cli(cluster, "leave", endpoints=[n5.client_address])
            assert members(cluster) == {"n1": True, "n2": True, "n3": True}
            writer.wait_for(len(writer.acked) + 20)
        # A member that left stops by itself; so does one that learnt of its removal.
        assert n5.proc is not None and n5.proc.wait(timeout=60) == 0
        _wait_until(lambda: not n4.running(), what="removed n4 to stop")
        assert n4.proc is not None and n4.proc.returncode == 0
        check_no_write_lost_and_replicas_identical(cluster, writer, ["n1", "n2", "n3"])
        # Their data directories cannot serve this cluster again by accident.
        n5.start()
        assert n5.proc is not None and n5.proc.wait(timeout=60) == 1
        assert "was removed" in n5.log_path.read_text()


def test_replace_a_killed_member_with_a_new_one(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        victim = next(n for n in cluster.nodes if n.name != leader)
        with writing(cluster) as writer:
            victim.kill()
            cli(cluster, "member", "remove", victim.name)
            assert victim.name not in members(cluster)
            join(cluster, tmp_path, "n4")
            wait_voter(cluster, "n4")
            writer.wait_for(len(writer.acked) + 20)
        names = sorted(n.name for n in cluster.nodes if n.running())
        assert names == sorted({"n1", "n2", "n3", "n4"} - {victim.name})
        assert set(members(cluster)) == set(names)
        check_no_write_lost_and_replicas_identical(cluster, writer, names)
        # The dead member comes back with its old directory: it never saw its removal,
        # finds out from the others and stops instead of lingering.
        victim.start()
        assert victim.proc is not None and victim.proc.wait(timeout=120) == 0
        assert "does not list us as a member" in victim.log_path.read_text()
        assert set(members(cluster)) == set(names)


def test_remove_the_current_leader(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        with writing(cluster) as writer:
            # Sent to the leader: it hands leadership over and the new leader removes it.
            cli(cluster, "member", "remove", leader,
                endpoints=[cluster.node(leader).client_address])
            writer.wait_for(len(writer.acked) + 20)
        rest = sorted(n.name for n in cluster.nodes if n.name != leader)
        assert members(cluster) == dict.fromkeys(rest, True)
        assert cluster.leader_name() in rest
        _wait_until(lambda: not cluster.node(leader).running(),
                    what="the removed leader to stop")
        check_no_write_lost_and_replicas_identical(cluster, writer, rest)


def test_sigterm_with_leave_on_shutdown_leaves_the_cluster(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        n4 = join(cluster, tmp_path, "n4", extra=["--leave-on-shutdown"])
        wait_voter(cluster, "n4")
        with writing(cluster) as writer:
            assert n4.terminate(timeout=60) == 0
            assert members(cluster) == {"n1": True, "n2": True, "n3": True}
            writer.wait_for(len(writer.acked) + 20)
        check_no_write_lost_and_replicas_identical(cluster, writer, ["n1", "n2", "n3"])


def test_a_learner_that_lags_is_not_promoted_and_status_says_why(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=10.0) as c:
            for i in range(30):
                c.put(f"k{i}", "v")
            # Registered but never started: it cannot catch up.
            c.member_add("n9", "127.0.0.1:9", client_address="127.0.0.1:10")

            def reason() -> str | None:
                view = c.status()["leader_view"] or {}
                row = next((m for m in view.get("members") or [] if m["name"] == "n9"), None)
                return None if row is None else row.get("promotion")

            _wait_until(lambda: reason() is not None, what="a promotion reason for n9")
            text = reason()
            assert text is not None and ("behind" in text or "heard" in text), text
            assert members(cluster)["n9"] is False
            c.member_remove("n9")
        assert "n9" not in members(cluster)


def test_a_learner_registered_first_joins_later_and_is_promoted_by_hand(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        n4 = cluster.add_joiner(tmp_path, "n4")
        cli(cluster, "member", "add", "n4", "--peer-address", f"127.0.0.1:{n4.peer_port}",
            "--client-address", n4.client_address, "--learner")
        listed = cli(cluster, "member", "list").stdout
        assert "n4" in listed and "learner" in listed
        n4.start()  # --join finds itself registered already

        def caught_up() -> bool:
            with cluster.client(timeout=10.0) as c:
                view = c.status()["leader_view"] or {}
            row = next((m for m in view.get("members") or [] if m["name"] == "n4"), None)
            return row is not None and row["lag"] == 0 and row["status"] == "active"

        _wait_until(caught_up, what="learner n4 to catch up")
        assert members(cluster)["n4"] is False  # a --learner is not promoted by itself
        cli(cluster, "member", "promote", "n4")
        assert members(cluster)["n4"] is True
        with Client([n4.client_address], timeout=10.0) as c:
            c.put(b"after", b"promotion")
        check_no_write_lost_and_replicas_identical(
            cluster, Writer([]), ["n1", "n2", "n3", "n4"])


def test_the_leader_leaves_by_handing_over_leadership_first(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.node(cluster.leader_name())
        with writing(cluster) as writer:
            out = cli(cluster, "leave", endpoints=[leader.client_address]).stdout
            assert f"{leader.name} left the cluster" in out
            writer.wait_for(len(writer.acked) + 20)
        assert leader.proc is not None and leader.proc.wait(timeout=60) == 0
        log = leader.log_path.read_text()
        assert "handing leadership over" in log
        rest = sorted(n.name for n in cluster.nodes if n is not leader)
        assert members(cluster) == dict.fromkeys(rest, True)
        check_no_write_lost_and_replicas_identical(cluster, writer, rest)


def test_move_leader_hands_leadership_to_the_named_voter(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        target = next(n.name for n in cluster.nodes if n.name != leader)
        out = cli(cluster, "member", "move-leader", target).stdout
        assert f"{target} is the leader" in out
        with Client([cluster.node(target).client_address], timeout=10.0) as c:
            assert c.status(local=True)["leader"] == target
            assert c.put(b"after", b"move").revision > 0
