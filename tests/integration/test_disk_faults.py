"""A member whose disk fills up while it serves: it stops serving, says why, loses
nothing, and serves again once there is room.

After a failed write or fsync the state of the page cache is unknown
(PostgreSQL's "fsyncgate"), so a node does not try to carry on: it answers
what is waiting with an unknown outcome, shuts down its node, and starts it
again from what the disk holds once it can write (in the same process).
The rest of the cluster keeps serving. A full disk is a small tmpfs the test
mounts and fills, then empties: the member serves again by itself. A disk
that turns read-only is an ext4 image mounted with errors=remount-ro whose
error the test triggers, as the kernel does for a failing disk: the member
stops and says why (such a filesystem stays read-only until it is checked
and mounted again, so recovery is shown with the full disk). Root only;
skipped where a filesystem cannot be mounted.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError

pytestmark = pytest.mark.timeout(300)


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    filler = path / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * (1 << 20))
    return filler


def write_through_a_disk_failure(cluster: Cluster, failing: NodeProcess,
                                 break_disk: Callable[[], object], writes: int,
                                 size: int) -> list[str]:
    """Write, break ``failing``'s disk, write on until it reports the failure; return
    the acknowledged keys, after checking the other members hold every one of them."""
    acked: list[str] = []
    with Client(cluster.endpoints, timeout=10.0) as c:
        for i in range(20):
            c.put(f"before/{i}", "v")
            acked.append(f"before/{i}")
    break_disk()
    with Client(cluster.endpoints, timeout=10.0) as c:
        for i in range(writes):
            with contextlib.suppress(QuorumKVError):  # unknown outcomes: not counted
                c.put(f"after/{i}", "x" * size)
                acked.append(f"after/{i}")
    wait_until(lambda: "the disk failed" in failing.log_path.read_text(),
               what=f"{failing.name} reporting the failed disk")
    assert failing.running()  # waiting for its disk, not gone
    # The others carried on; every acknowledged write is there.
    with Client([n.client_address for n in cluster.nodes if n is not failing],
                timeout=10.0) as c:
        found = {kv.key.decode() for kv in c.scan_prefix("", keys_only=True).kvs}
    assert set(acked) <= found, sorted(set(acked) - found)[:5]
    return acked


def test_a_member_whose_disk_fills_stops_serving_and_comes_back_with_nothing_lost(
        tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "96m") as small, \
            running_cluster(tmp_path, data_dirs={"n1": small / "n1"}) as cluster:
        cluster.leader_name()
        n1 = cluster.node("n1")
        assert n1.proc is not None
        pid = n1.proc.pid
        filler = small / "filler"
        write_through_a_disk_failure(cluster, n1, lambda: fill(small), writes=200, size=4096)
        log = n1.log_path.read_text()
        assert "No space left on device" in log
        assert "Task was destroyed but it is pending" not in log  # a clean stop
        # The disk recovers: the member serves again by itself and catches up.
        os.remove(filler)
        with Client(cluster.endpoints, timeout=30.0) as c:
            last = c.put("final", "1")

        def caught_up() -> bool:
            with Client([n1.client_address], timeout=5.0) as one:
                return one.get("final", consistency="one") is not None

        wait_until(caught_up, what="n1 catching up")
        with Client([n1.client_address], timeout=5.0) as one:
            kv = one.get("final", consistency="one")
            assert kv is not None and kv.mod_revision == last.revision
        assert n1.running() and n1.proc.pid == pid  # the same process, never restarted


@contextlib.contextmanager
def ext4_that_fails_read_only(path: Path, image: Path) -> Iterator[Path]:
    """A small ext4 filesystem mounted with errors=remount-ro, whose error can be
    triggered: it then turns read-only under the node's open files (the kernel's own
    reaction to a failing disk). Root only; skipped where it cannot be set up."""
    path.mkdir(parents=True, exist_ok=True)
    steps = [["truncate", "-s", "96M", str(image)], ["mkfs.ext4", "-q", "-F", str(image)],
             ["mount", "-o", "loop,errors=remount-ro", str(image), str(path)]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip(f"cannot set up an ext4 image here ({done.stderr.strip()})")
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(path)], capture_output=True,
                            text=True, check=False).stdout.strip()
    trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
    try:
        if not trigger.exists():
            pytest.skip("this kernel cannot trigger an ext4 error")
        yield trigger
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_member_whose_disk_turns_read_only_stops_acknowledging_and_says_why(
        tmp_path: Path) -> None:
    with ext4_that_fails_read_only(tmp_path / "ext4", tmp_path / "ext4.img") as trigger, \
            running_cluster(tmp_path, data_dirs={"n1": tmp_path / "ext4" / "n1"}) as cluster:
        cluster.leader_name()
        n1 = cluster.node("n1")
        write_through_a_disk_failure(
            cluster, n1, lambda: trigger.write_text("quorumkv test: the disk turns read-only"),
            writes=100, size=512)
        # The kernel reports the turned filesystem as read-only to a write, or as an I/O
        # error to an fsync already under way: either way the log names it.
        log = n1.log_path.read_text()
        assert "Read-only file system" in log or "Input/output error" in log
