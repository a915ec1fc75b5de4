"""Every way a membership change or ``serve --join`` is refused, each by its own test.

Real ``quorumkv serve`` processes on 127.0.0.1 (cluster_harness.py). A refused
joiner must exit with status 1, say which error stopped it in the format of
``cli._fail`` ("error (CODE): message"), never start serving, and leave the
cluster exactly as it was: n1, n2, n3, all voters, at their own addresses, as
every member sees it.

The refusals leave the cluster unchanged, so most tests share one cluster per
module (started with a distinctive cluster token, so the test that checks the
token is never logged can search the logs for it: the default token,
"quorumkv", is also the prefix of every logger name). ClusterFull needs its own
``--max-voters 3`` cluster and the concurrent-changes test its own cluster,
since it does change the membership.

Waits poll with generous deadlines; nothing is asserted about elapsed time.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_harness import Cluster, NodeProcess, free_ports, running_cluster

from quorumkv.client import AsyncClient, Client, Member
from quorumkv.errors import (
    AuthenticationFailed,
    ClusterFull,
    ConfChangeInProgress,
    InvalidNode,
    QuorumKVError,
)

pytestmark = pytest.mark.timeout(300)

TOKEN = "right-token-c81d7e"
"""The shared cluster's token: distinctive, so a log that contains it is easy to find."""
WRONG_TOKEN = "wrong-token-5f3a"
DEFAULT_TOKEN = "quorumkv"
NAMES = ("n1", "n2", "n3")
EXIT_DEADLINE = 60.0
"""A refused joiner exits long before this (NetworkError's join timeout is 3 s here)."""
WAIT_DEADLINE = 60.0

Expected = list[tuple[str, bool, bool, str, str | None]]


# -- helpers -----------------------------------------------------------------------------


def _originals(cluster: Cluster) -> list[NodeProcess]:
    """The three members the cluster was started with (not the joiners added since)."""
    return [cluster.node(name) for name in NAMES]


def _endpoints(cluster: Cluster) -> list[str]:
    return [n.client_address for n in _originals(cluster)]


def _shape(members: list[Member]) -> Expected:
    return sorted((m.name, m.voter, m.auto_promote, m.peer_address, m.client_address)
                  for m in members)


def _expected(cluster: Cluster) -> Expected:
    """n1, n2, n3: voters, not joining, at the addresses the harness gave them."""
    return sorted((n.name, True, False, f"127.0.0.1:{n.peer_port}", n.client_address)
                  for n in _originals(cluster))


def _views(cluster: Cluster) -> dict[str, Expected]:
    """Every original member's own answer to member_list (each node answers from its
    applied configuration, so this sees a change a follower has or has not applied)."""
    out = {}
    for n in _originals(cluster):
        with Client([n.client_address], timeout=10.0) as c:
            out[n.name] = _shape(c.member_list())
    return out


def _wait_until_unchanged(cluster: Cluster, deadline: float = WAIT_DEADLINE) -> None:
    """Every original member lists exactly n1, n2, n3 as voters at their addresses."""
    expected = _expected(cluster)
    wanted = dict.fromkeys(NAMES, expected)
    end = time.monotonic() + deadline
    views: dict[str, Expected] | None = None
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            views = _views(cluster)
            if views == wanted:
                return
        except QuorumKVError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"the membership is not (back to) n1,n2,n3: {views!r} "
                         f"(expected {expected!r}; last error {last!r})")


def _assert_unchanged(cluster: Cluster) -> None:
    """No change was made: every member already lists exactly n1, n2, n3 (a refused
    request changes nothing, so there is nothing to wait for)."""
    assert _views(cluster) == dict.fromkeys(NAMES, _expected(cluster))


def _read_log(node: NodeProcess) -> str:
    return node.log_path.read_text(errors="replace") if node.log_path.exists() else ""


def _wait_exit(node: NodeProcess, deadline: float = EXIT_DEADLINE) -> int:
    """The joiner's exit status; fails if it is still running after ``deadline``."""
    assert node.proc is not None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        code = node.proc.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    raise AssertionError(f"{node.name} still runs after {deadline} s; its log:\n"
                         f"{_read_log(node)[-3000:]}")


def _assert_refused(node: NodeProcess, code: str) -> str:
    """The joiner exited 1 with ``error (code)`` and never served or claimed its data dir."""
    status = _wait_exit(node)
    text = _read_log(node)
    assert status == 1, (status, text[-3000:])
    assert f"error ({code}): " in text, text[-3000:]
    assert "serving clients" not in text, text[-3000:]
    return text


def _tree_digest(root: Path) -> dict[str, str]:
    """Every file under ``root`` by relative path, with its content's sha256."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _peer_address() -> str:
    """An address nobody listens on (a learner there never answers; that is fine)."""
    return f"127.0.0.1:{free_ports(1)[0]}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("join-errors"),
                         extra=["--token", TOKEN]) as c:
        c.leader_name()
        _wait_until_unchanged(c)
        yield c


# -- AuthenticationFailed ----------------------------------------------------------------


def test_a_wrong_token_is_authentication_failed_and_no_token_is_logged(
        cluster: Cluster, tmp_path: Path) -> None:
    joiner = cluster.add_joiner(tmp_path, "n4", join=_endpoints(cluster),
                                extra=["--token", WRONG_TOKEN])
    joiner.start()
    _assert_refused(joiner, "authentication_failed")
    assert not (joiner.data_dir / "member.json").exists()
    _assert_unchanged(cluster)

    # The same refusal through the client API, for an add and a remove.
    with Client(_endpoints(cluster), timeout=10.0) as c:
        with pytest.raises(AuthenticationFailed):
            c.member_add("n9", _peer_address(), token=WRONG_TOKEN)
        with pytest.raises(AuthenticationFailed):
            c.member_remove("n3", token=WRONG_TOKEN)
        with pytest.raises(AuthenticationFailed):  # the default is not this cluster's token
            c.member_add("n9", _peer_address())
    _assert_unchanged(cluster)

    # Neither the wrong token nor the right one is ever written to any node's log.
    logs = {n.name: _read_log(n) for n in cluster.nodes}
    assert logs[joiner.name] and all(logs[n] for n in NAMES)
    for name, text in logs.items():
        assert WRONG_TOKEN not in text, f"the wrong token is in {name}'s log"
        assert TOKEN not in text, f"the cluster token is in {name}'s log"


# -- InvalidNode -------------------------------------------------------------------------


def test_a_joiner_named_like_a_member_is_invalid_node(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    joiner = cluster.add_joiner(tmp_path, "n2", join=_endpoints(cluster),
                                extra=["--token", TOKEN])
    assert joiner.data_dir != cluster.node("n2").data_dir  # a fresh dir, other ports
    joiner.start()
    text = _assert_refused(joiner, "invalid_node")
    assert "'n2' already exists" in text, text[-3000:]
    assert not (joiner.data_dir / "member.json").exists()
    _assert_unchanged(cluster)  # n2 keeps its own peer and client address


def test_member_add_refuses_a_used_or_malformed_address(cluster: Cluster) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    with Client(_endpoints(cluster), timeout=10.0) as c:
        with pytest.raises(InvalidNode, match="already used"):
            c.member_add("n9", f"127.0.0.1:{n1.peer_port}", token=TOKEN)
        with pytest.raises(InvalidNode, match="already used"):
            c.member_add("n9", _peer_address(), client_address=n2.client_address,
                         token=TOKEN)
        for bad in ("nohost", "127.0.0.1:notaport", "127.0.0.1:70000", "127.0.0.1:0", ""):
            with pytest.raises(InvalidNode):
                c.member_add("n9", bad, token=TOKEN)
        with pytest.raises(InvalidNode):
            c.member_add("n9", _peer_address(), client_address="nohost", token=TOKEN)
        with pytest.raises(InvalidNode):  # not a valid member name
            c.member_add("bad name!", _peer_address(), token=TOKEN)
    _assert_unchanged(cluster)


def test_a_data_dir_of_another_cluster_is_invalid_node(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    # Cluster B: one node, bootstrapped, written to, stopped.
    b_root = tmp_path / "B"
    b_root.mkdir()
    with running_cluster(b_root, size=1, extra=["--token", TOKEN]) as b:
        b.leader_name()
        with Client(b.endpoints, timeout=10.0) as c:
            c.put(b"belongs-to", b"B")
            b_cluster_id = c.membership().cluster_id
    b_dir = b.node("n1").data_dir
    member_json = (b_dir / "member.json").read_text()
    before = _tree_digest(b_dir)
    assert "member.json" in before and len(before) > 1

    with Client(_endpoints(cluster), timeout=10.0) as c:
        a_cluster_id = c.membership().cluster_id
    assert a_cluster_id != b_cluster_id

    # B's n1 directory, under B's n1 name, asked to join cluster A.
    joiner = cluster.add_joiner(tmp_path, "n1", join=_endpoints(cluster),
                                extra=["--token", TOKEN])
    at = joiner.args.index("--data-dir")
    joiner.args[at + 1] = str(b_dir)
    joiner.data_dir = b_dir
    joiner.start()
    text = _assert_refused(joiner, "invalid_node")
    assert str(b_cluster_id) in text and str(a_cluster_id) in text, text[-3000:]

    assert (b_dir / "member.json").read_text() == member_json
    assert _tree_digest(b_dir) == before
    _assert_unchanged(cluster)


# -- NetworkError ------------------------------------------------------------------------


def test_a_cluster_nobody_answers_for_is_network_error(cluster: Cluster,
                                                        tmp_path: Path) -> None:
    config = tmp_path / "join.toml"
    config.write_text("join_timeout_s = 3\n")
    nobody = f"127.0.0.1:{free_ports(1)[0]}"
    joiner = cluster.add_joiner(tmp_path, "n4", join=[nobody],
                                extra=["--config", str(config), "--token", TOKEN])
    joiner.start()
    status = _wait_exit(joiner)
    text = _read_log(joiner)
    assert status == 1, (status, text[-3000:])
    assert "serving clients" not in text, text[-3000:]
    assert not (joiner.data_dir / "member.json").exists()
    _assert_unchanged(cluster)
    # The message names the address tried and the join timeout from the TOML file.
    error = next((line for line in text.splitlines() if line.startswith("error (")), "")
    assert nobody in error and "within 3s" in error, text[-3000:]
    assert error.startswith("error (network_error): "), text[-3000:]


# -- ClusterFull -------------------------------------------------------------------------


def test_a_full_cluster_refuses_a_voter_and_accepts_a_learner(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=["--max-voters", "3"]) as cluster:
        cluster.leader_name()
        _wait_until_unchanged(cluster)

        joiner = cluster.add_joiner(tmp_path, "n4", join=_endpoints(cluster))
        joiner.start()
        _assert_refused(joiner, "cluster_full")
        assert not (joiner.data_dir / "member.json").exists()
        _assert_unchanged(cluster)

        learner_peer = _peer_address()
        with Client(_endpoints(cluster), timeout=10.0) as c:
            with pytest.raises(ClusterFull) as refused:
                c.member_add("n5", learner_peer)
            assert refused.value.details.get("max_voters") == 3

            # Learners do not count toward max_voters.
            added = c.member_add("n5", learner_peer, learner=True)
            assert (added.name, added.voter, added.auto_promote) == ("n5", False, False)
            assert added.peer_address == learner_peer
            listed = _shape(c.member_list())  # the add's answer came from the leader
            assert listed == sorted([*_expected(cluster),
                                     ("n5", False, False, learner_peer, None)])

            # With the learner in, a fourth voter is still refused, and promoting the
            # learner would make four voters too.
            with pytest.raises(ClusterFull):
                c.member_add("n6", _peer_address())
            with pytest.raises(ClusterFull):
                c.member_promote("n5")

            removed = c.member_remove("n5")
            assert removed.name == "n5" and not removed.voter
        _wait_until_unchanged(cluster)


# -- ConfChangeInProgress ----------------------------------------------------------------


async def _add_two_at_once(address: str, peers: dict[str, str],
                           ) -> dict[str, Member | BaseException]:
    async with AsyncClient([address], timeout=20.0) as c:
        names = sorted(peers)
        results = await asyncio.gather(
            *(c.member_add(name, peers[name], learner=True) for name in names),
            return_exceptions=True)
    return dict(zip(names, results, strict=True))


def test_concurrent_changes_never_split_the_configuration(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        _wait_until_unchanged(cluster)
        leader = cluster.node(cluster.leader_name())
        peers = {"n7": _peer_address(), "n8": _peer_address()}

        results = asyncio.run(_add_two_at_once(leader.client_address, peers))

        added = {name for name, r in results.items() if isinstance(r, Member)}
        failed = {name: r for name, r in results.items() if not isinstance(r, Member)}
        assert added, f"neither concurrent add succeeded: {results!r}"
        for name, err in failed.items():
            assert isinstance(err, ConfChangeInProgress), (name, err)
        for name in added:
            member = results[name]
            assert isinstance(member, Member)
            assert (member.name, member.voter, member.peer_address) == (name, False,
                                                                        peers[name])

        # Every successful add is in the configuration, every refused one is absent:
        # as the leader sees it, and as every member sees it once it has applied.
        want = sorted([*_expected(cluster),
                       *((name, False, False, peers[name], None) for name in added)])
        end = time.monotonic() + WAIT_DEADLINE
        views: dict[str, Expected] = {}
        while time.monotonic() < end:
            views = _views(cluster)
            if all(v == want for v in views.values()):
                break
            time.sleep(0.1)
        assert views == dict.fromkeys(NAMES, want), (results, views)
