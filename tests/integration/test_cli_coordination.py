"""The coordination commands of the command line (watch, lease, lock), as real processes.

One three-node cluster is shared by the module (each test uses its own keys).
Every process a test starts is stopped by its pid in a ``finally``; waits
are polls or reads with generous deadlines.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO

import pytest
from cluster_harness import Cluster, running_cluster

from quorumkv.client import Client

pytestmark = pytest.mark.timeout(300)

CLI_TIMEOUT = 60.0
LOCK_QUEUE = b"/quorumkv/locks/"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-coordination")) as c:
        c.leader_name()
        yield c


def argv(cluster: Cluster, *args: str) -> list[str]:
    # The endpoints go before the command: everything after `lock NAME --` is the child's.
    return [sys.executable, "-m", "quorumkv.cli", "--endpoints", ",".join(cluster.endpoints),
            *args]


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(cluster, *args), capture_output=True, text=True,
                          timeout=CLI_TIMEOUT, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


class Lines:
    """The lines a running process writes to one of its pipes, read by a thread."""

    def __init__(self, pipe: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def next(self, timeout: float = CLI_TIMEOUT) -> str | None:
        return self._lines.get(timeout=timeout)

    def until(self, needle: str, timeout: float = CLI_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self.next(max(0.0, deadline - time.monotonic()))
            assert line is not None, f"the stream ended before {needle!r}"
            if needle in line:
                return line


def start(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(argv(cluster, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# -- watch -----------------------------------------------------------------------------------


def test_watch_count_from_a_past_revision(cluster: Cluster) -> None:
    with Client(cluster.endpoints, timeout=10.0) as c:
        first = c.put(b"cw/a", b"1").revision
        c.put(b"cw/b", b"2")
        c.put(b"cwx", b"not under the prefix")
        c.delete(b"cw/a")
    out = ok(cli(cluster, "watch", "cw/", "--prefix", "--rev", str(first), "--count", "3"))
    assert out.splitlines() == [f"PUT cw/a 1 rev={first}", f"PUT cw/b 2 rev={first + 1}",
                                f"DELETE cw/a rev={first + 3}"]
    docs = [json.loads(line) for line in ok(cli(
        cluster, "watch", "cw/a", "--rev", str(first), "--count", "2", "--json",
        "--prev-kv")).splitlines()]
    assert [(d["type"], d["key"], d["revision"]) for d in docs] == [
        ("PUT", "cw/a", first), ("DELETE", "cw/a", first + 3)]
    assert docs[0]["value"] == "1" and docs[0]["kv"]["version"] == 1
    assert docs[1]["prev_kv"]["value"] == "1"


def test_watch_live_events_until_sigterm(cluster: Cluster) -> None:
    proc = start(cluster, "watch", "live/", "--prefix")
    try:
        err = Lines(proc.stderr)  # type: ignore[arg-type]
        out = Lines(proc.stdout)  # type: ignore[arg-type]
        err.until("watching from revision")
        with Client(cluster.endpoints, timeout=10.0) as c:
            rev = c.put(b"live/x", b"hello").revision
            assert out.next() == f"PUT live/x hello rev={rev}"
            rev = c.delete(b"live/x").revision
            assert out.next() == f"DELETE live/x rev={rev}"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=CLI_TIMEOUT) == 0
    finally:
        stop(proc)


# -- lease -----------------------------------------------------------------------------------


def test_lease_grant_ttl_list_revoke(cluster: Cluster) -> None:
    lease_id = int(ok(cli(cluster, "lease", "grant", "60")).strip())
    doc = json.loads(ok(cli(cluster, "lease", "ttl", str(lease_id), "--json")))
    assert doc["id"] == lease_id and doc["ttl"] == 60 and 0 < doc["remaining"] <= 60
    ok(cli(cluster, "put", "cl/leased", "v", "--lease", str(lease_id)))
    shown = ok(cli(cluster, "lease", "ttl", hex(lease_id), "--keys")).splitlines()
    assert shown[0].startswith(f"lease {lease_id}: ttl 60s") and shown[1:] == ["cl/leased"]
    assert f"{lease_id} ttl=60" in ok(cli(cluster, "lease", "list")).splitlines()
    listed = json.loads(ok(cli(cluster, "lease", "list", "--json")))["leases"]
    assert {"id": lease_id, "ttl": 60} in listed
    assert ok(cli(cluster, "lease", "revoke", str(lease_id))) == \
        f"lease {lease_id} revoked (1 keys deleted)\n"
    with Client(cluster.endpoints, timeout=10.0) as c:
        assert c.get(b"cl/leased") is None
    gone = cli(cluster, "lease", "ttl", str(lease_id))
    assert gone.returncode == 1 and "error (lease_not_found)" in gone.stderr
    bad = cli(cluster, "lease", "revoke", "not-a-number")
    assert bad.returncode == 2 and "lease id" in bad.stderr
    expired = cli(cluster, "put", "cl/late", "v", "--lease", str(lease_id))
    assert expired.returncode == 1 and "error (lease_not_found)" in expired.stderr


def test_lease_keep_alive_keeps_it_until_interrupted(cluster: Cluster) -> None:
    # A TTL long enough for a busy machine to start the keep-alive command in time.
    lease_id = int(ok(cli(cluster, "lease", "grant", "5")).strip())
    with Client(cluster.endpoints, timeout=10.0) as c:
        c.put(b"cl/kept", b"v", lease=lease_id)
        proc = start(cluster, "lease", "keep-alive", str(lease_id))
        try:
            out = Lines(proc.stdout)  # type: ignore[arg-type]
            # Renewed again and again (every TTL/3), for over two TTLs.
            for _ in range(7):
                assert out.until("kept alive") == f"lease {lease_id} kept alive (ttl 5s)"
            assert c.get(b"cl/kept") is not None
            os.kill(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=CLI_TIMEOUT) == 0
        finally:
            stop(proc)
        # Nobody keeps it alive now: the leader expires it.
        deadline = time.monotonic() + CLI_TIMEOUT
        while c.get(b"cl/kept") is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert c.get(b"cl/kept") is None
    gone = cli(cluster, "lease", "keep-alive", str(lease_id))
    assert gone.returncode == 1 and "error (lease_not_found)" in gone.stderr


# -- lock ------------------------------------------------------------------------------------


def test_lock_runs_the_command_with_its_token_and_exit_code(cluster: Cluster) -> None:
    script = ("import os, sys; print('token', os.environ['QUORUMKV_LOCK_TOKEN']); "
              "sys.exit(3)")
    first = cli(cluster, "lock", "cli-lock", "--ttl", "5", "--", sys.executable, "-c", script)
    assert first.returncode == 3, (first.stdout, first.stderr)
    token = int(first.stdout.split()[1])
    assert token > 0
    second = cli(cluster, "lock", "cli-lock", "--", sys.executable, "-c", script.replace(
        "sys.exit(3)", "sys.exit(0)"))
    assert second.returncode == 0
    assert int(second.stdout.split()[1]) > token
    # Released each time: nothing is left in the queue.
    with Client(cluster.endpoints, timeout=10.0) as c:
        assert c.scan_prefix(LOCK_QUEUE + b"cli-lock/", count_only=True).count == 0
    missing = cli(cluster, "lock", "cli-lock", "--", "/nonexistent/command")
    assert missing.returncode == 127 and "cannot run" in missing.stderr


def test_lock_excludes_a_second_command_until_the_first_exits(cluster: Cluster) -> None:
    holder = start(cluster, "lock", "cli-excl", "--", sys.executable, "-c",
                   "import time; print('holding', flush=True); time.sleep(120)")
    try:
        out = Lines(holder.stdout)  # type: ignore[arg-type]
        out.until("holding")
        waited = cli(cluster, "lock", "cli-excl", "--wait", "1", "--", "true")
        assert waited.returncode == 1 and "error (timeout)" in waited.stderr
        os.kill(holder.pid, signal.SIGTERM)  # passed on to the command, which ends
        assert holder.wait(timeout=CLI_TIMEOUT) == 128 + signal.SIGTERM
        assert ok(cli(cluster, "lock", "cli-excl", "--wait", "30", "--", "true")) == ""
    finally:
        stop(holder)


def test_lock_stops_the_command_when_the_lock_is_lost(cluster: Cluster) -> None:
    holder = start(cluster, "lock", "cli-lost", "--ttl", "3", "--kill-after", "2", "--",
                   sys.executable, "-c",
                   "import time; print('holding', flush=True); time.sleep(120)")
    try:
        out = Lines(holder.stdout)  # type: ignore[arg-type]
        out.until("holding")
        with Client(cluster.endpoints, timeout=10.0) as c:
            (kv,) = c.scan_prefix(LOCK_QUEUE + b"cli-lost/").kvs
            lease_id = int(kv.key.rsplit(b"/", 1)[1], 16)
            assert kv.lease == lease_id
            c.revoke_lease(lease_id)  # as if it had expired
        assert holder.wait(timeout=CLI_TIMEOUT) == 1
        assert holder.stderr is not None
        assert "lost the lock" in holder.stderr.read()
    finally:
        stop(holder)
