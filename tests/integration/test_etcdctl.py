"""Unmodified etcdctl (etcd's command line, API v3) against a 3-member quorumkv cluster.

``make test`` installs Debian's etcd-client when it can (as root); elsewhere,
without etcdctl on PATH, these tests skip and say so.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_support import EtcdCluster, etcd_cluster

ETCDCTL = shutil.which("etcdctl")
pytestmark = pytest.mark.skipif(
    ETCDCTL is None, reason="etcdctl is not on PATH (Debian's etcd-client package; `make "
                            "test` installs it when run as root)")


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcdctl"))) as c:
        yield c


def etcdctl(ec: EtcdCluster, *args: str, stdin: str | None = None,
            endpoints: str | None = None, stderr: bool = False) -> str:
    """etcdctl's output (``stderr``: what it printed there, where some commands report)."""
    assert ETCDCTL is not None
    env = {**os.environ, "ETCDCTL_API": "3"}
    done = subprocess.run(
        [ETCDCTL, f"--endpoints={endpoints or ec.endpoints}", "--command-timeout=20s", *args],
        input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 0, (f"etcdctl {' '.join(args)} failed ({done.returncode}): "
                                  f"{done.stderr}")
    return done.stderr if stderr else done.stdout


def test_put_get_and_json(ec: EtcdCluster) -> None:
    assert etcdctl(ec, "put", "greeting", "hello") == "OK\n"
    assert etcdctl(ec, "get", "greeting") == "greeting\nhello\n"
    answer = json.loads(etcdctl(ec, "-w", "json", "get", "greeting"))
    header = answer["header"]
    assert header["cluster_id"] and header["member_id"] and header["raft_term"] >= 1
    assert header["revision"] >= 1
    [kv] = answer["kvs"]
    assert base64.b64decode(kv["key"]) == b"greeting"
    assert base64.b64decode(kv["value"]) == b"hello"
    assert kv["version"] == 1 and kv["create_revision"] == kv["mod_revision"]
    assert answer["count"] == 1


def test_every_member_takes_writes(ec: EtcdCluster) -> None:
    """Each member alone as the endpoint: followers send the write on to the leader."""
    for name in sorted(ec.ports):
        assert etcdctl(ec, "put", f"member/{name}", name, endpoints=ec.address(name)) == "OK\n"
    out = etcdctl(ec, "get", "--prefix", "member/", "--print-value-only")
    assert out.split() == sorted(ec.ports)


def test_prefix_revision_and_serializable(ec: EtcdCluster) -> None:
    etcdctl(ec, "put", "fruit/apple", "red")
    etcdctl(ec, "put", "fruit/banana", "yellow")
    etcdctl(ec, "put", "fruitless", "no")
    assert etcdctl(ec, "get", "--prefix", "fruit/") == (
        "fruit/apple\nred\nfruit/banana\nyellow\n")
    assert etcdctl(ec, "get", "--prefix", "fruit/", "--keys-only").split() == [
        "fruit/apple", "fruit/banana"]
    before = json.loads(etcdctl(ec, "-w", "json", "get", "fruit/apple"))
    revision = before["kvs"][0]["mod_revision"]
    etcdctl(ec, "put", "fruit/apple", "green")
    assert etcdctl(ec, "get", "fruit/apple", f"--rev={revision}") == "fruit/apple\nred\n"
    assert etcdctl(ec, "get", "fruit/apple") == "fruit/apple\ngreen\n"
    # Serializable: the member's own state; it has applied our last write by the time a
    # linearizable read on the same member returns.
    endpoint = ec.address("n2")
    etcdctl(ec, "get", "fruit/apple", endpoints=endpoint)
    assert etcdctl(ec, "get", "fruit/apple", "--consistency=s",
                   endpoints=endpoint) == "fruit/apple\ngreen\n"
    assert etcdctl(ec, "get", "--prefix", "fruit/", "--sort-by=VALUE", "--order=DESCEND",
                   "--print-value-only").split() == ["yellow", "green"]
    assert '"Count" : 2' in etcdctl(ec, "get", "--prefix", "fruit/", "-w", "fields")


def test_delete_and_delete_prefix(ec: EtcdCluster) -> None:
    for key in ("tmp/a", "tmp/b", "tmp/c"):
        etcdctl(ec, "put", key, "x")
    assert etcdctl(ec, "del", "tmp/a") == "1\n"
    assert etcdctl(ec, "del", "tmp/a") == "0\n"
    assert etcdctl(ec, "del", "--prefix", "tmp/", "--prev-kv") == "2\ntmp/b\nx\ntmp/c\nx\n"
    assert etcdctl(ec, "get", "--prefix", "tmp/") == ""


def test_txn_from_stdin(ec: EtcdCluster) -> None:
    etcdctl(ec, "put", "account", "open")
    script = ('value("account") = "open"\n\n'
              'put account closed\nget account\n\n'
              'put account reopened\n\n')
    assert etcdctl(ec, "txn", stdin=script) == "SUCCESS\n\nOK\n\naccount\nclosed\n"
    # The same compare fails now: the failure branch runs.
    assert etcdctl(ec, "txn", stdin=script) == "FAILURE\n\nOK\n"
    assert etcdctl(ec, "get", "account", "--print-value-only") == "reopened\n"
    versioned = ('version("account") > "2"\nmod("account") > "0"\n\n'
                 'del account\n\n\n')
    assert etcdctl(ec, "txn", stdin=versioned) == "SUCCESS\n\n1\n"


def test_endpoint_health(ec: EtcdCluster) -> None:
    # etcdctl 3.4 reports health on stderr. It reads the key "health": any answer but an
    # auth error, even an empty one, is healthy.
    out = etcdctl(ec, "endpoint", "health", stderr=True)
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert all(" is healthy: successfully committed proposal" in line for line in lines)
    assert {line.split(" ")[0] for line in lines} == set(ec.endpoints.split(","))


def test_compaction(ec: EtcdCluster) -> None:
    etcdctl(ec, "put", "history", "one")
    first = json.loads(etcdctl(ec, "-w", "json", "get", "history"))["kvs"][0]["mod_revision"]
    etcdctl(ec, "put", "history", "two")
    current = json.loads(etcdctl(ec, "-w", "json", "get", "history"))["header"]["revision"]
    assert etcdctl(ec, "compaction", str(current)) == f"compacted revision {current}\n"
    assert ETCDCTL is not None
    done = subprocess.run([ETCDCTL, f"--endpoints={ec.endpoints}", "get", "history",
                           f"--rev={first}"], capture_output=True, text=True,
                          env={**os.environ, "ETCDCTL_API": "3"}, timeout=60, check=False)
    assert done.returncode != 0
    assert "required revision has been compacted" in done.stderr
    assert etcdctl(ec, "get", "history", "--print-value-only") == "two\n"
