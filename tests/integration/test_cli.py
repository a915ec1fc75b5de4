"""The ``quorumkv`` command line and ``python -m quorumkv.devcluster``, as real processes.

Client commands run as subprocesses against one real three-node cluster
shared by the module (each test uses its own keys). Every process a test
starts is stopped by its pid in a ``finally``; waits are event waits with
generous deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_results import as_json, failed, ok
from cluster_harness import Cluster, bindable, free_ports, running_cluster

from quorumkv.client import CompareOp, CompareTarget, DeleteRange, Put, RangeRequest
from quorumkv.errors import InvalidArgument
from quorumkv.tools.txn_syntax import parse_txn

pytestmark = pytest.mark.timeout(300)

CLI_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-cluster")) as c:
        c.leader_name()
        yield c


def cli(endpoints: list[str] | str, *args: str, stdin: str | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run one CLI command; subprocess.run kills the child by pid if it overruns."""
    eps = endpoints if isinstance(endpoints, str) else ",".join(endpoints)
    return subprocess.run([sys.executable, "-m", "quorumkv.cli", *args, "--endpoints", eps],
                          input=stdin, capture_output=True, text=True, timeout=CLI_TIMEOUT,
                          check=False)


# -- key-value commands ------------------------------------------------------------------


def test_put_get_del(cluster: Cluster) -> None:
    eps = cluster.endpoints
    assert re.fullmatch(r"OK \(revision \d+\)\n", ok(cli(eps, "put", "cli/greeting", "hello")))
    assert ok(cli(eps, "get", "cli/greeting")) == "hello\n"
    doc = as_json(cli(eps, "get", "cli/greeting", "--json", "--consistency", "one"))
    assert doc["found"] is True and doc["kv"]["value"] == "hello" and doc["kv"]["version"] == 1
    first_revision = doc["kv"]["mod_revision"]

    put = as_json(cli(eps, "put", "cli/greeting", "bonjour", "--json"))
    assert put["revision"] > first_revision
    old = cli(eps, "get", "cli/greeting", "--revision", str(first_revision))
    assert ok(old) == "hello\n"

    one = ok(cli(eps, "put", "cli/fast", "x", "--consistency", "one"))
    assert one == "OK (durable on the leader, not yet committed)\n"

    missing = cli(eps, "get", "cli/nothing-here")
    assert missing.returncode == 1 and missing.stdout == ""
    assert "not found" in missing.stderr
    missing_json = cli(eps, "get", "cli/nothing-here", "--json")
    assert missing_json.returncode == 1 and json.loads(missing_json.stdout)["found"] is False

    assert ok(cli(eps, "del", "cli/greeting")) == "deleted 1\n"
    assert cli(eps, "get", "cli/greeting").returncode == 1
    for i in range(3):
        ok(cli(eps, "put", f"cli/tree/{i}", str(i)))
    assert as_json(cli(eps, "del", "cli/tree/", "--prefix", "--json"))["deleted"] == 3


def test_options_before_the_command_and_from_the_environment(cluster: Cluster) -> None:
    env = {**os.environ, "QUORUMKV_ENDPOINTS": ",".join(cluster.endpoints)}
    base = [sys.executable, "-m", "quorumkv.cli"]
    run = subprocess.run([*base, "--json", "put", "cli/env", "v"], env=env, capture_output=True,
                         text=True, timeout=CLI_TIMEOUT, check=False)
    assert json.loads(ok(run))["revision"] > 0
    run = subprocess.run([*base, "get", "cli/env"], env=env, capture_output=True, text=True,
                         timeout=CLI_TIMEOUT, check=False)
    assert ok(run) == "v\n"


def test_scan(cluster: Cluster) -> None:
    eps = cluster.endpoints
    for name in ("a", "b", "c", "d"):
        ok(cli(eps, "put", f"scan/{name}", f"value-{name}"))
    listing = cli(eps, "scan", "scan/")
    assert ok(listing).splitlines() == [f"scan/{n} = value-{n}" for n in "abcd"]
    assert "4 keys" in listing.stderr
    assert ok(cli(eps, "scan", "--prefix", "scan/", "--keys-only")).split() == [
        f"scan/{n}" for n in "abcd"]
    ranged = as_json(cli(eps, "scan", "--from", "scan/b", "--to", "scan/d", "--json"))
    assert [kv["key"] for kv in ranged["kvs"]] == ["scan/b", "scan/c"]
    assert ranged["kvs"][0]["value"] == "value-b"
    limited = as_json(cli(eps, "scan", "scan/", "--limit", "1", "--json"))
    assert limited["more"] is True and limited["count"] == 4 and len(limited["kvs"]) == 1
    keys_only = as_json(cli(eps, "scan", "scan/", "--keys-only", "--json"))
    assert all("value" not in kv for kv in keys_only["kvs"])


def test_txn_from_stdin_and_from_arguments(cluster: Cluster) -> None:
    eps = cluster.endpoints
    ok(cli(eps, "put", "txn/owner", "alice"))
    script = """
        # take the lock if alice owns the config and nobody holds it
        value("txn/owner") = "alice"
        create("txn/lock") = 0
        version("txn/owner") > 0
        mod("txn/owner") < 1000000
        put txn/lock alice
        get txn/owner
        else
        get txn/lock
    """
    out = ok(cli(eps, "txn", stdin=script))
    assert out.splitlines()[0].startswith("SUCCEEDED")
    assert "put txn/lock alice: OK" in out and "txn/owner = alice" in out
    # The lock exists now, so the same transaction takes the else branch.
    doc = as_json(cli(eps, "txn", "--json", stdin=script))
    assert doc["succeeded"] is False
    assert doc["responses"][0]["type"] == "range"
    assert doc["responses"][0]["kvs"][0]["value"] == "alice"
    # As arguments, one line each; 'del --prefix' inside a transaction.
    out = ok(cli(eps, "txn", 'value("txn/owner") != "alice"', "put txn/x 1", "else",
                 "del txn/lock --prefix"))
    assert out.startswith("FAILED") and "deleted 1" in out
    assert cli(eps, "get", "txn/lock").returncode == 1


def test_bad_input_is_one_error_line_and_exit_1(cluster: Cluster) -> None:
    eps = cluster.endpoints
    assert "txn line 2" in failed(cli(eps, "txn", stdin='version("k") = 0\nfrobnicate k\n'),
                                  "invalid_argument")
    failed(cli(eps, "txn", stdin='version("k") = "not a number"\nput k v\n'),
           "invalid_argument")
    failed(cli(eps, "txn", stdin="put k v\nversion(\"k\") = 0\n"), "invalid_argument")
    failed(cli(eps, "txn", stdin="\n# nothing\n"), "invalid_argument")
    failed(cli("not-an-endpoint", "get", "k"), "invalid_argument")
    failed(cli(eps, "scan", "a/", "--from", "b"), "invalid_argument")
    # A revision the store has not reached is refused by the server.
    failed(cli(eps, "get", "k", "--revision", str(2**40)), "invalid_argument")
    # Nobody listens on a port just handed out and closed again.
    (port,) = free_ports(1)
    failed(cli(f"127.0.0.1:{port}", "get", "k", "--timeout", "1"), "network_error")


def test_txn_syntax() -> None:
    parsed = parse_txn([
        'value("a b") = "x y"', "version(k) != 0", "create('k') > 1", "mod(k) < 5",
        "lease(k) == 0", "then", 'put "a b" "1 2"', "get k --prefix", "--", "del k"])
    assert [(c.key, c.target, c.op, c.value) for c in parsed.compares] == [
        (b"a b", CompareTarget.VALUE, CompareOp.EQUAL, b"x y"),
        (b"k", CompareTarget.VERSION, CompareOp.NOT_EQUAL, 0),
        (b"k", CompareTarget.CREATE_REVISION, CompareOp.GREATER, 1),
        (b"k", CompareTarget.MOD_REVISION, CompareOp.LESS, 5),
        (b"k", CompareTarget.LEASE, CompareOp.EQUAL, 0)]
    assert parsed.success == (Put(key=b"a b", value=b"1 2"),
                              RangeRequest(key=b"k", range_end=b"l"))
    assert parsed.failure == (DeleteRange(key=b"k"),)
    for bad, where in (("put k", "line 1"), ("then\nthen", "line 2"),
                       ("put k v\nelse\nelse", "line 3"), ('size("k") = 1', "line 1"),
                       ('value("k) = 1', "line 1"), ("get a b", "line 1")):
        with pytest.raises(InvalidArgument, match=where):
            parse_txn(bad.split("\n"))


# -- cluster commands --------------------------------------------------------------------


def test_status_and_member_list(cluster: Cluster) -> None:
    eps = cluster.endpoints
    leader = cluster.leader_name()
    ok(cli(eps, "put", "status/k", "v"))
    doc = as_json(cli(eps, "status", "--json"))
    assert doc["leader"] == leader
    members = {m["name"]: m for m in doc["members"]}
    assert set(members) == {"n1", "n2", "n3"}
    assert [m["name"] for m in doc["members"] if m["role"] == "leader"] == [leader]
    for name, m in members.items():
        assert m["reachable"] and m["voter"]
        assert m["address"] == cluster.node(name).client_address
        assert m["commit"] >= 1 and m["applied"] >= 1 and m["match"] is not None

    table = ok(cli(eps, "status"))
    assert f"leader: {leader}" in table
    for name in ("n1", "n2", "n3"):
        assert re.search(rf"{name}\s.*127\.0\.0\.1:\d+\s.*(leader|follower)", table), table

    listed = as_json(cli(eps, "member", "list", "--json"))
    assert sorted(m["name"] for m in listed["members"]) == ["n1", "n2", "n3"]
    assert all(m["voter"] and m["id"] > 0 for m in listed["members"])
    human = ok(cli(eps, "member", "list"))
    for name in ("n1", "n2", "n3"):
        assert re.search(rf"{name}\s.*\d+\s.*voter\s.*{cluster.node(name).client_address}",
                         human), human


def test_status_shows_a_stopped_member_as_unreachable(cluster: Cluster) -> None:
    leader = cluster.leader_name()
    follower = next(n for n in cluster.nodes if n.name != leader)
    eps = cluster.endpoints
    try:
        follower.terminate()
        doc = as_json(cli(eps, "status", "--json", "--timeout", "3"))
        members = {m["name"]: m for m in doc["members"]}
        assert members[follower.name]["reachable"] is False
        assert members[follower.name]["role"] == "unreachable"
        assert doc["leader"] == leader
        human = ok(cli(eps, "status", "--timeout", "3"))
        assert re.search(rf"{follower.name}\s.*unreachable", human), human
    finally:
        if not follower.running():
            follower.start()
    # Back in the cluster before the next test uses it.
    deadline = time.monotonic() + 60
    while True:
        doc = as_json(cli(eps, "status", "--json"))
        if all(m["reachable"] for m in doc["members"]):
            break
        assert time.monotonic() < deadline, doc
        time.sleep(0.2)


def test_bench_reports_sane_numbers(cluster: Cluster) -> None:
    eps = cluster.endpoints
    put = as_json(cli(eps, "bench", "--duration", "1", "--clients", "4", "--json"))
    assert put["workload"] == "put" and put["clients"] == 4 and put["connections"] == 1
    assert put["ops"] > 0 and put["errors"] == 0 and put["ops_per_s"] > 0
    # At least the asked duration; the upper bound only catches a runaway (a busy machine
    # may take a while to finish the requests in flight).
    assert 0.9 <= put["elapsed_s"] <= 15
    lat = put["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]

    get = as_json(cli(eps, "bench", "--workload", "get", "--requests", "50", "--clients", "9",
                      "--keys", "20", "--warmup", "0", "--json"))
    assert get["ops"] == 50 and get["errors"] == 0 and get["connections"] == 2
    assert get["consistency"] == "quorum"
    failed(cli(eps, "bench", "--consistency", "session", "--duration", "1"), "invalid_argument")


# -- the development cluster -------------------------------------------------------------


def _free_base_port() -> int:
    """A base port whose nine dev-cluster ports (BASE+0..2, +100..102, +200..202) are free."""
    for _ in range(100):
        (base,) = free_ports(1)
        ports = [base + offset + i for offset in (0, 100, 200) for i in range(3)]
        if max(ports) <= 65535 and all(bindable(p) for p in ports):
            return base
    raise AssertionError("no free base port found")


class DevClusterProcess:
    """``python -m quorumkv.devcluster`` with its output read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "quorumkv.devcluster", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.child_pids: list[int] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_ready(self, timeout: float = 120.0) -> dict[str, str]:
        """The endpoints and leader it announces; remembers the pids of its nodes."""
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        while "stop" not in found:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line is not None, f"devcluster ended early: {self.output}"
            self.output.append(line)
            if m := re.search(r"\bpid (\d+)\b", line):
                self.child_pids.append(int(m[1]))
            for key in ("endpoints", "leader", "dashboard"):
                if line.startswith(f"{key}: "):
                    found[key] = line.split(": ", 1)[1].strip()
            if line.startswith("Ctrl-C stops"):
                found["stop"] = line
        return found

    def stop(self) -> None:
        """Called in a finally: whatever the test did, nothing it started survives."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)
        for pid in self.child_pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.05)


def test_devcluster_starts_serves_and_stops_on_sigint() -> None:
    dev = DevClusterProcess("--fresh", "--base-port", str(_free_base_port()))
    try:
        ready = dev.wait_ready()
        assert ready["leader"] in ("n1", "n2", "n3")
        assert len(dev.child_pids) == 3 and all(_alive(p) for p in dev.child_pids)
        for example in ("put hello world", "get hello", "status"):
            assert any(line.rstrip().endswith(example) for line in dev.output), dev.output
        dashboard = ready["dashboard"].split()[0]
        assert dashboard.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(dashboard + "health", timeout=CLI_TIMEOUT) as answer:
            assert json.load(answer)["status"] == "ok"
        ok(cli(ready["endpoints"], "put", "hello", "world"))
        assert ok(cli(ready["endpoints"], "get", "hello")) == "world\n"
        data_dir = re.search(r"fresh data in (\S+)", dev.output[0])
        assert data_dir is not None and Path(data_dir[1]).is_dir()

        os.kill(dev.proc.pid, signal.SIGINT)
        assert dev.proc.wait(timeout=60) == 0
        _wait_gone(dev.child_pids)
        assert not Path(data_dir[1]).exists()  # --fresh cleans up after itself
    finally:
        dev.stop()


def test_devcluster_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    base = str(_free_base_port())
    data = tmp_path / "data"
    first = DevClusterProcess("--data-dir", str(data), "--base-port", base)
    try:
        ready = first.wait_ready()
        ok(cli(ready["endpoints"], "put", "persisted", "yes"))
        os.kill(first.proc.pid, signal.SIGTERM)
        assert first.proc.wait(timeout=60) == 0
        _wait_gone(first.child_pids)
    finally:
        first.stop()
    second = DevClusterProcess("--data-dir", str(data), "--base-port", base)
    try:
        ready = second.wait_ready()
        assert ok(cli(ready["endpoints"], "get", "persisted")) == "yes\n"
        os.kill(second.proc.pid, signal.SIGINT)
        assert second.proc.wait(timeout=60) == 0
        _wait_gone(second.child_pids)
    finally:
        second.stop()


def test_devcluster_refuses_a_port_in_use() -> None:
    base = _free_base_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        # As a server binds: the port may be in TIME_WAIT from an earlier test's node.
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", base + 101))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "quorumkv.devcluster", "--fresh",
                                 "--base-port", str(base)], capture_output=True, text=True,
                                timeout=CLI_TIMEOUT, check=False)
    assert result.returncode == 1
    assert f"{base + 101}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr
