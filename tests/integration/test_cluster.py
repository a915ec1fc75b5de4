"""A real three-node cluster: separate `quorumkv serve` processes on 127.0.0.1.

Every process is started by the test and stopped by its pid when the test
ends, pass or fail (``running_cluster``). Waits are event waits with
generous deadlines, never sleeps that hope.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cluster_harness import Cluster, running_cluster, wait_until

from quorumkv.client import Client, RawClient
from quorumkv.errors import QuorumKVError, ReplicaReadFailed, ReplicaWriteFailed, Timeout

pytestmark = pytest.mark.timeout(300)


def _wait_until(predicate: Callable[[], object], timeout: float = 60.0,
                what: str = "condition") -> None:
    wait_until(predicate, timeout, what)


def _local_value(cluster: Cluster, name: str, key: bytes) -> bytes | None:
    """What one node's own state machine holds (a 'one' read served by that node alone)."""
    with Client([cluster.node(name).client_address], timeout=5.0) as c:
        kv = c.get(key, consistency="one")
        return None if kv is None else kv.value


def test_a_three_node_cluster_serves_every_operation(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=10.0) as c:
            first = c.put(b"greeting", b"hello")
            assert first.revision >= 1
            kv = c.get(b"greeting")
            assert kv is not None and kv.value == b"hello" and kv.version == 1
            assert c.get(b"greeting", consistency="session") is not None
            assert c.get(b"missing") is None
            for i in range(5):
                c.put(f"dir/{i}".encode(), str(i).encode())
            scan = c.scan_prefix(b"dir/")
            assert [kv.key for kv in scan.kvs] == [f"dir/{i}".encode() for i in range(5)]
            assert c.range(b"dir/", b"dir0", count_only=True).count == 5
            assert c.compare_and_swap(b"greeting", b"hello", b"bonjour") is True
            assert c.compare_and_swap(b"greeting", b"hello", b"hola") is False
            assert c.compare_and_swap(b"fresh", None, b"new") is True
            old = c.get(b"greeting", revision=first.revision)
            assert old is not None and old.value == b"hello"
            deleted = c.delete(b"dir/", range_end=b"dir0")
            assert deleted.deleted == 5
            assert c.scan_prefix(b"dir/").kvs == ()
            durable = c.put(b"fast", b"1", consistency="one")
            assert durable is not None
            c.put(b"everyone", b"1", consistency="all")
            kv = c.get(b"everyone", consistency="all")
            assert kv is not None and kv.value == b"1"
            st = c.status()
            assert st["leader"] in {"n1", "n2", "n3"}
            assert len(st["members"]) == 3
        with RawClient(cluster.endpoints, timeout=10.0) as raw:
            raw.batch_put({b"raw/a": b"1", b"raw/b": b"2", b"raw/c": b"3"})
            assert raw.batch_get([b"raw/a", b"raw/c", b"raw/zzz"]) == {
                b"raw/a": b"1", b"raw/c": b"3"}
            assert raw.scan(b"raw/", b"raw/c") == [(b"raw/a", b"1"), (b"raw/b", b"2")]
            assert raw.compare_and_swap(b"raw/a", b"1", b"one") is True
            assert raw.get(b"raw/a") == b"one"
            raw.batch_delete([b"raw/a"])
            assert raw.delete_range(b"raw/", b"raw0") == 2
            assert raw.scan(b"raw/", b"raw0") == []
        # Every member applies the same history.
        for name in ("n1", "n2", "n3"):
            _wait_until(lambda name=name: _local_value(cluster, name, b"greeting") == b"bonjour",
                        what=f"{name} to apply the writes")


def test_killing_the_leader_loses_no_acknowledged_write(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        acked: dict[bytes, bytes] = {}
        with cluster.client(timeout=20.0) as c:
            for i in range(30):
                key, value = f"k{i}".encode(), f"v{i}".encode()
                c.put(key, value)
                acked[key] = value
            cluster.node(leader).kill()
            # The client finds the new leader through its redirect logic.
            for i in range(30, 60):
                key, value = f"k{i}".encode(), f"v{i}".encode()
                c.put(key, value)
                acked[key] = value
            new_leader = cluster.leader_name()
            assert new_leader != leader
            for key, value in acked.items():
                kv = c.get(key)
                assert kv is not None and kv.value == value, key
        # The killed node restarts from its data directory and catches up.
        cluster.node(leader).start()
        _wait_until(lambda: _local_value(cluster, leader, b"k59") == b"v59", timeout=90,
                    what="the restarted node to catch up")
        for key, value in acked.items():
            assert _local_value(cluster, leader, key) == value


def test_a_node_far_behind_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=["--snapshot-threshold", "40"]) as cluster:
        leader = cluster.leader_name()
        follower = next(n.name for n in cluster.nodes if n.name != leader)
        cluster.node(follower).kill()
        with cluster.client(timeout=20.0) as c:
            for i in range(200):
                c.put(f"s{i:03d}".encode(), b"x" * 64)
        snap_dir = cluster.node(leader).data_dir / "snap"
        _wait_until(lambda: any(p.suffix == ".snap" for p in snap_dir.iterdir()),
                    what="the leader to take a snapshot")
        cluster.node(follower).start()
        _wait_until(lambda: _local_value(cluster, follower, b"s199") == b"x" * 64, timeout=90,
                    what="the follower to catch up")
        follower_snaps = (cluster.node(follower).data_dir / "snap").iterdir()
        assert any(p.suffix == ".snap" for p in follower_snaps)


def test_hostile_bytes_on_both_ports_leave_the_node_serving(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=10.0) as c:
            c.put(b"before", b"1")
        target = cluster.nodes[0]
        payloads = [b"\xff" * 64, (1 << 31).to_bytes(4, "big") + b"x", b"\x00\x00\x00\x05\xc1\xc1",
                    b"GET / HTTP/1.1\r\n\r\n"]
        for port in (target.client_port, target.peer_port):
            for payload in payloads:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(payload)
                    s.settimeout(5)
                    with contextlib.suppress(TimeoutError, ConnectionError):
                        s.recv(1024)
        assert target.running()
        with cluster.client(timeout=10.0) as c:
            c.put(b"after", b"2")
            kv = c.get(b"before")
            assert kv is not None and kv.value == b"1"


def test_sigterm_stops_a_node_cleanly(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=10.0) as c:
            c.put(b"k", b"v")
        for node in cluster.nodes:
            assert node.terminate() == 0, node.log_path.read_text()[-2000:]


def test_consistency_levels_keep_their_promises_when_a_node_is_cut_off(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        follower, other = (n.name for n in cluster.nodes if n.name != leader)
        with cluster.client(timeout=15.0) as c:
            first = c.put(b"k", b"v1")
            _wait_until(lambda: _local_value(cluster, follower, b"k") == b"v1",
                        what="the follower to apply v1")
            # The follower misses the next writes...
            cluster.node(follower).kill()
            second = c.put(b"k", b"v2")
            assert second.revision > first.revision
            # ...and an 'all' write cannot be confirmed by it: the error says the
            # write is committed anyway, and a quorum read shows it.
            with pytest.raises(ReplicaWriteFailed, match="IS committed"):
                c.put(b"k", b"v3", consistency="all")
            kv = c.get(b"k")
            assert kv is not None and kv.value == b"v3"
            with pytest.raises(ReplicaReadFailed):
                c.get(b"k", consistency="all")
        # Now it comes back cut off from everyone else (they are frozen).
        cluster.node(leader).pause()
        cluster.node(other).pause()
        cluster.node(follower).start()
        try:
            with Client([cluster.node(follower).client_address], timeout=20.0) as lone:
                # 'one' answers at once, from the follower's stale state, and says which
                # revision it reflects.
                stale = lone.get(b"k", consistency="one")
                assert stale is not None and stale.value == b"v1"
                assert lone.revision < second.revision
                # 'quorum' cannot be served by a minority: a clear error within the timeout.
            with Client([cluster.node(follower).client_address], timeout=3.0) as lone:
                started = time.monotonic()
                with pytest.raises((Timeout, QuorumKVError)):
                    lone.get(b"k", consistency="quorum")
                assert time.monotonic() - started < 30
        finally:
            cluster.node(leader).resume()
            cluster.node(other).resume()
        _wait_until(lambda: _local_value(cluster, follower, b"k") == b"v3", timeout=60,
                    what="the follower to catch up")


def test_a_corrupt_log_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=15.0) as c:
            for i in range(20):
                c.put(f"c{i}".encode(), b"v" * 100)
        victim = cluster.nodes[0]
        assert victim.terminate() == 0
        segment = sorted((victim.data_dir / "wal").glob("*.wal"))[0]
        data = bytearray(segment.read_bytes())
        # Damage a byte well inside the log, with intact records after it:
        # that is corruption, never a torn tail to be cut away.
        data[len(data) // 2] ^= 0xFF
        segment.write_bytes(bytes(data))
        victim.start()
        assert victim.proc is not None
        code = victim.proc.wait(timeout=60)
        output = victim.log_path.read_text()
        assert code == 1, output[-3000:]
        assert "error (corrupt_log)" in output and segment.name in output
        # The rest of the cluster keeps serving, with everything committed.
        with Client([n.client_address for n in cluster.nodes[1:]], timeout=15.0) as c:
            kv = c.get(b"c19")
            assert kv is not None and kv.value == b"v" * 100


def test_a_session_read_never_goes_back_in_time_for_its_client(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        leader = cluster.leader_name()
        follower = next(n.name for n in cluster.nodes if n.name != leader)
        # The client knows only the leader and one follower, so when the leader
        # dies it must read from that follower, which missed the latest write.
        endpoints = [cluster.node(leader).client_address, cluster.node(follower).client_address]
        with Client(endpoints, timeout=30.0, read_consistency="session") as c:
            c.put(b"s", b"v1")
            _wait_until(lambda: _local_value(cluster, follower, b"s") == b"v1",
                        what="the follower to apply v1")
            cluster.node(follower).pause()
            latest = c.put(b"s", b"v2")
            assert c.revision >= latest.revision
            cluster.node(leader).kill()
            cluster.node(follower).resume()
            kv = c.get(b"s")
            assert kv is not None and kv.value == b"v2"
            assert kv.mod_revision == latest.revision
