"""Unmodified etcdctl's watch, lease, lock and elect against a 3-member quorumkv cluster.

etcdctl's ``lock`` and ``elect`` are client-side recipes over Txn, Lease
and Watch (etcd's ``concurrency`` package), so they exercise all three.
Without etcdctl on PATH these tests skip (see test_etcdctl.py).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_harness import wait_until
from etcd_support import KV, EtcdCluster, etcd_cluster

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl is not on PATH (Debian's etcd-client package; `make "
                            "test` installs it when run as root)")
WAIT_S = 60.0


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcdctl-coord"))) as c:
        yield c


def _env() -> dict[str, str]:
    return {**os.environ, "ETCDCTL_API": "3"}


def etcdctl(ec: EtcdCluster, *args: str, endpoints: str | None = None) -> str:
    assert ETCDCTL is not None
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints or ec.endpoints}", "--command-timeout=20s", *args],
        capture_output=True, text=True, env=_env(), timeout=60, check=False)
    assert done.returncode == 0, (f"etcdctl {' '.join(args)} failed ({done.returncode}): "
                                  f"{done.stderr}")
    return done.stdout


class Running:
    """A long-running etcdctl (watch, lock, elect) whose output lines are read as they come."""

    def __init__(self, endpoints: str, *args: str) -> None:
        assert ETCDCTL is not None
        self.proc = subprocess.Popen([ETCDCTL, f"--endpoints={endpoints}", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=_env())
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str:
        got = self._lines.get(timeout=WAIT_S)
        if got is None:
            stderr = self.proc.stderr.read() if self.proc.stderr is not None else ""
            raise AssertionError(f"etcdctl ended ({self.proc.wait()}): {stderr}")
        return got

    def lines(self, count: int) -> list[str]:
        return [self.line() for _ in range(count)]

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """End it by its pid (SIGTERM: lock and elect let go first), however it is."""
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _keys(ec: EtcdCluster, prefix: str) -> list[str]:
    return etcdctl(ec, "get", "--prefix", prefix, "--keys-only").split()


def _events(w: Running, count: int) -> list[tuple[str, str, str]]:
    """etcdctl watch prints each event as three lines: type, key, value."""
    found = []
    for _ in range(count):
        kind, key, value = w.lines(3)
        found.append((kind, key, value))
    return found


def _watchers(ec: EtcdCluster, name: str) -> int:
    """Watches open on member ``name`` (from its metrics)."""
    url = ec.cluster.node(name).http_url + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    found = re.search(r"^quorumkv_watchers (\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _serving(ec: EtcdCluster) -> str:
    """The member etcdctl's watch is on (the only watch of the cluster), once it exists:
    from then on it sees every write."""
    found: list[str] = []

    def registered() -> bool:
        found[:] = [n for n in sorted(ec.ports)
                    if ec.cluster.node(n).running() and _watchers(ec, n) > 0]
        return len(found) == 1

    wait_until(registered, timeout=WAIT_S, what="etcdctl's watch", ignore=(OSError,))
    return found[0]


# -- watch -------------------------------------------------------------------------------


def test_watch_with_a_concurrent_writer(ec: EtcdCluster) -> None:
    w = Running(ec.endpoints, "watch", "--prefix", "cw/")
    try:
        _serving(ec)
        writer = threading.Thread(
            target=lambda: [etcdctl(ec, "put", f"cw/{i}", f"v{i}") for i in range(10)])
        writer.start()
        got = _events(w, 10)
        writer.join(timeout=WAIT_S)
        assert got == [("PUT", f"cw/{i}", f"v{i}") for i in range(10)]
        etcdctl(ec, "del", "cw/3")
        assert _events(w, 1) == [("DELETE", "cw/3", "")]
    finally:
        w.stop()


def test_watch_resumes_after_its_member_is_killed(tmp_path: Path) -> None:
    """Every value written arrives once, in order, across a kill -9 of the watch's member."""
    with etcd_cluster(tmp_path) as ec:
        leader = ec.cluster.leader_name()
        followers = [n for n in sorted(ec.ports) if n != leader]
        # etcdctl requires a leader for a watch: killing the leader under it may end the
        # watch with "no leader", as with etcd. So etcdctl knows only the followers: its
        # watch lands on one, and moves to the other when that one is killed.
        endpoints = ",".join(ec.address(n) for n in followers)
        w = Running(endpoints, "watch", "--prefix", "kw/")
        try:
            serving = _serving(ec)
            if serving == leader:  # only if leadership moved since it was looked up
                pytest.skip("the leader changed under the test: etcdctl's watch is on it")
            survivor = next(n for n in followers if n != serving)
            kv = KV(ec.address(survivor))
            try:
                for i in range(10):
                    kv.put(f"kw/{i:03d}".encode(), str(i).encode())
                ec.cluster.node(serving).kill()
                for i in range(10, 40):
                    kv.put(f"kw/{i:03d}".encode(), str(i).encode())
            finally:
                kv.close()
            got = _events(w, 40)
            assert [value for _, _, value in got] == [str(i) for i in range(40)]
            assert [key for _, key, _ in got] == [f"kw/{i:03d}" for i in range(40)]
        finally:
            w.stop()


# -- lease -------------------------------------------------------------------------------


def _granted(out: str) -> str:
    found = re.match(r"lease ([0-9a-f]+) granted with TTL\((\d+)s\)", out)
    assert found, out
    return found.group(1)


def test_lease_grant_attach_keepalive_timetolive_revoke(ec: EtcdCluster) -> None:
    lid = _granted(etcdctl(ec, "lease", "grant", "60"))
    assert etcdctl(ec, "put", f"--lease={lid}", "leased/k", "v") == "OK\n"
    assert etcdctl(ec, "lease", "keep-alive", "--once", lid) == (
        f"lease {lid} keepalived with TTL(60)\n")
    ttl = etcdctl(ec, "lease", "timetolive", "--keys", lid)
    assert re.fullmatch(rf"lease {lid} granted with TTL\(60s\), remaining\(\d+s\), "
                        r"attached keys\(\[leased/k\]\)\n", ttl), ttl
    assert lid in etcdctl(ec, "lease", "list").split()
    assert etcdctl(ec, "lease", "revoke", lid) == f"lease {lid} revoked\n"
    assert etcdctl(ec, "get", "leased/k") == ""
    assert etcdctl(ec, "lease", "timetolive", lid) == f"lease {lid} already expired\n"


def test_a_short_lease_expires_with_its_key(ec: EtcdCluster) -> None:
    lid = _granted(etcdctl(ec, "lease", "grant", "2"))
    etcdctl(ec, "put", f"--lease={lid}", "shortlived", "v")
    wait_until(lambda: etcdctl(ec, "get", "shortlived") == "", timeout=WAIT_S,
               what="the lease to expire and its key to go")
    assert etcdctl(ec, "lease", "timetolive", lid) == f"lease {lid} already expired\n"


# -- lock and elect ----------------------------------------------------------------------


def test_lock_runs_a_command_holding_the_lock(ec: EtcdCluster) -> None:
    assert etcdctl(ec, "lock", "mylock", "--", "echo", "held") == "held\n"
    assert _keys(ec, "mylock") == []  # let go once the command is done


def test_two_lock_contenders_take_turns(ec: EtcdCluster) -> None:
    first = Running(ec.endpoints, "lock", "turns")
    second: Running | None = None
    try:
        holder_key = first.line()  # printed once the lock is held
        assert holder_key.startswith("turns/")
        second = Running(ec.endpoints, "lock", "turns", "--", "echo", "second-held")
        # The second contender has queued its key behind the first's: it waits.
        wait_until(lambda: len(_keys(ec, "turns/")) == 2, timeout=WAIT_S,
                   what="the second contender to queue")
        assert second.proc.poll() is None
        first.signal(signal.SIGTERM)  # etcdctl unlocks, then exits
        assert first.proc.wait(timeout=WAIT_S) == 0
        assert second.line() == "second-held"
        assert second.proc.wait(timeout=WAIT_S) == 0
        assert _keys(ec, "turns/") == []
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_elect_one_leader_at_a_time_and_observe(ec: EtcdCluster) -> None:
    one = Running(ec.endpoints, "elect", "vote", "p1")
    two: Running | None = None
    observer: Running | None = None
    try:
        key, proposal = one.lines(2)  # printed once elected
        assert key.startswith("vote/") and proposal == "p1"
        observer = Running(ec.endpoints, "elect", "-l", "vote")
        assert observer.lines(2)[1] == "p1"
        two = Running(ec.endpoints, "elect", "vote", "p2")
        wait_until(lambda: len(_keys(ec, "vote/")) == 2, timeout=WAIT_S,
                   what="the second candidate to campaign")
        assert two.proc.poll() is None  # not elected while p1 leads
        one.signal(signal.SIGTERM)  # resigns, then exits
        assert one.proc.wait(timeout=WAIT_S) == 0
        assert two.lines(2)[1] == "p2"
        assert observer.lines(2)[1] == "p2"
    finally:
        for proc in (one, two, observer):
            if proc is not None:
                proc.stop()
