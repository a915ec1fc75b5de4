"""Locks, elections, and the blocking watch and lease wrappers, on real node processes.

The lock's safety test runs contender *processes* (``lock_contender.py``)
that record every hold in one history file while the test kills the leader
and freezes a follower; the history is then checked: no two holds overlap,
fencing tokens increase from holder to holder, and holders kept coming
after the faults. Every process a test starts is stopped by its pid in a
``finally``; waits are polls with generous deadlines, never elapsed-time
assertions.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_harness import Cluster, running_cluster
from cluster_harness import wait_until as harness_wait_until

from quorumkv.client import (
    AsyncClient,
    BlockingElection,
    BlockingLock,
    Client,
    Election,
    EventType,
    KeyValue,
    Lock,
    WatchResponse,
)
from quorumkv.errors import LeaseNotFound, QuorumKVError, Timeout

pytestmark = pytest.mark.timeout(300)

CONTENDER = Path(__file__).with_name("lock_contender.py")
DEADLINE = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("recipes-cluster")) as c:
        c.leader_name()
        yield c


def wait_until(predicate: Callable[[], object], what: str, timeout: float = DEADLINE) -> None:
    harness_wait_until(predicate, timeout, what)


# -- contender processes and their history ---------------------------------------------------


@dataclass
class Hold:
    token: int
    pid: int
    enter: int
    exit: int | None = None
    valid_until: int | None = None
    lost: bool = False

    @property
    def safe_end(self) -> int:
        """Until when the lock vouched for this hold: its exit, or its lease's bound if
        that came first (or the lock said it was lost)."""
        assert self.exit is not None and self.valid_until is not None
        if self.lost or self.valid_until < self.exit:
            return min(self.exit, self.valid_until)
        return self.exit

    @property
    def was_lost(self) -> bool:
        assert self.exit is not None and self.valid_until is not None
        return self.lost or self.valid_until < self.exit


def read_history(path: Path) -> tuple[list[str], dict[int, Hold]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return lines, parse_history(lines)


def parse_history(lines: list[str]) -> dict[int, Hold]:
    holds: dict[int, Hold] = {}
    for line in lines:
        parts = line.split()
        if parts[0] == "enter":
            token, pid, t = int(parts[1]), int(parts[2]), int(parts[3])
            assert token not in holds, f"fencing token {token} handed out twice"
            holds[token] = Hold(token=token, pid=pid, enter=t)
        elif parts[0] == "exit":
            token, pid = int(parts[1]), int(parts[2])
            hold = holds[token]
            assert hold.pid == pid and hold.exit is None, line
            hold.exit, hold.valid_until, hold.lost = int(parts[3]), int(parts[4]), \
                parts[5] == "1"
    return holds


def check_history(lines: list[str], holds: dict[int, Hold]) -> None:
    """The lock's promises, as the contenders saw them."""
    assert all(h.exit is not None for h in holds.values()), "a hold never ended"
    # The interval each hold was vouched for by the lock: they never overlap, and the
    # fencing tokens increase from one to the next.
    vouched = sorted((h for h in holds.values() if h.safe_end > h.enter),
                     key=lambda h: h.enter)
    for before, after in itertools.pairwise(vouched):
        assert after.token > before.token, (before, after)
        assert before.safe_end <= after.enter, f"holds overlap: {before} and {after}"
    # Holds that were never lost follow each other strictly in the file too: each
    # enter is followed by the same holder's exit before the next enter.
    kept = {h.token for h in holds.values() if not h.was_lost}
    open_token: int | None = None
    for line in lines:
        parts = line.split()
        if parts[0] not in ("enter", "exit") or int(parts[1]) not in kept:
            continue
        if parts[0] == "enter":
            assert open_token is None, f"token {parts[1]} entered while {open_token} held"
            open_token = int(parts[1])
        else:
            assert open_token == int(parts[1]), line
            open_token = None


def start_contender(cluster: Cluster, history: Path, *extra: str,
                    rotate: int = 0) -> subprocess.Popen[bytes]:
    endpoints = cluster.endpoints[rotate:] + cluster.endpoints[:rotate]
    log = open(history.with_suffix(f".{rotate}.{time.monotonic_ns()}.log"), "wb")  # noqa: SIM115
    try:
        return subprocess.Popen([sys.executable, str(CONTENDER), "--endpoints",
                                 ",".join(endpoints), "--history", str(history), *extra],
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def stop_by_pid(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=30)


# -- the lock under faults -------------------------------------------------------------------


def test_lock_excludes_and_fences_while_the_leader_dies_and_a_follower_freezes(
        tmp_path: Path) -> None:
    history = tmp_path / "history"
    stop = tmp_path / "stop"
    (tmp_path / "cluster").mkdir()
    with running_cluster(tmp_path / "cluster") as cluster:
        leader = cluster.leader_name()
        procs = [start_contender(cluster, history, "--stop-file", str(stop), "--ttl", "3",
                                 rotate=i % 3) for i in range(4)]
        paused = None
        try:
            def enters_after(t: int) -> int:
                return sum(1 for h in read_history(history)[1].values() if h.enter > t)

            wait_until(lambda: enters_after(0) >= 5, "holds before the faults")
            # The leader dies; the lock goes on with the two others, then it comes back.
            killed_at = time.monotonic_ns()
            cluster.node(leader).kill()
            wait_until(lambda: enters_after(killed_at) >= 3, "holds while the leader is dead")
            cluster.node(leader).start()
            new_leader = cluster.leader_name()
            # A follower freezes for longer than the TTL; the one that freezes is not the
            # node just restarted, so every commit now needs that node.
            paused = next(n for n in cluster.nodes if n.name not in (new_leader, leader))
            paused.pause()
            time.sleep(4.0)
            paused.resume()
            paused = None
            resumed_at = time.monotonic_ns()
            wait_until(lambda: enters_after(resumed_at) >= 5, "holds after the faults")
            stop.touch()
            for p in procs:
                p.wait(timeout=DEADLINE)
        finally:
            if paused is not None:
                paused.resume()
            stop_by_pid(procs)
    lines, holds = read_history(history)
    check_history(lines, holds)
    assert len({h.pid for h in holds.values()}) >= 2, "only one contender ever held the lock"
    assert sum(1 for h in holds.values() if h.enter > resumed_at and not h.was_lost) >= 5


def test_the_history_checker_catches_overlaps_and_stale_tokens() -> None:
    """The checker has teeth: an overlap, or a token that goes back, is an error."""
    ok = ["enter 5 1 100", "exit 5 1 200 10000 0", "enter 9 2 300", "exit 9 2 400 10000 0"]
    check_history(ok, parse_history(ok))
    overlap = ["enter 5 1 100", "enter 9 2 150", "exit 5 1 200 10000 0",
               "exit 9 2 400 10000 0"]
    with pytest.raises(AssertionError):
        check_history(overlap, parse_history(overlap))
    backwards = ["enter 9 1 100", "exit 9 1 200 10000 0", "enter 5 2 300", "exit 5 2 400 10000 0"]
    with pytest.raises(AssertionError):
        check_history(backwards, parse_history(backwards))
    # A holder whose lease ran out (valid_until 120) is vouched for only until then.
    lost = ["enter 5 1 100", "enter 9 2 150", "exit 9 2 160 10000 0", "exit 5 1 200 120 1"]
    check_history(lost, parse_history(lost))


def test_waiters_get_the_lock_in_the_order_they_asked(cluster: Cluster) -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        async with AsyncClient(cluster.endpoints, timeout=10.0) as client:
            holder = Lock(client, "fair", ttl=5)
            first = await holder.acquire(timeout=DEADLINE)
            order: list[str] = []
            tokens = [first]

            async def wait_turn(name: str, lock: Lock) -> None:
                tokens.append(await lock.acquire(timeout=DEADLINE))
                order.append(name)
                await lock.release()

            tasks = []
            for i, name in enumerate(("a", "b", "c")):
                tasks.append(asyncio.ensure_future(wait_turn(name, Lock(client, "fair", ttl=5))))
                # Queue strictly one after another: wait until the waiter's key exists.
                while (await client.scan_prefix(holder.queue_prefix, count_only=True)).count \
                        < i + 2:
                    await asyncio.sleep(0.02)
            assert order == []  # nobody got past the holder
            await holder.release()
            await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
            return order, tokens

    order, tokens = asyncio.run(scenario())
    assert order == ["a", "b", "c"]
    assert tokens == sorted(tokens) and len(set(tokens)) == 4


def test_a_killed_holder_loses_the_lock_when_its_lease_expires(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    history = tmp_path / "history"
    holder = start_contender(cluster, history, "--name", "crash", "--ttl", "2",
                             "--hold-forever")
    try:
        wait_until(lambda: len(read_history(history)[1]) == 1, "the contender to hold")
        (held_token,) = read_history(history)[1]
        with cluster.client(timeout=10.0) as c:
            waiter = BlockingLock(c, "crash", ttl=2)
            # Held: a bounded wait gives up, and leaves no key behind.
            with pytest.raises(Timeout):
                waiter.acquire(timeout=1.0)
            queue = b"/quorumkv/locks/crash/"
            assert c.scan_prefix(queue, count_only=True).count == 1
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)
            token = waiter.acquire(timeout=DEADLINE)
            try:
                assert token > held_token
                assert waiter.held and not waiter.lost
                keys = [kv.key for kv in c.scan_prefix(queue).kvs]
                assert keys == [waiter.key]
            finally:
                waiter.release()
            assert c.scan_prefix(queue, count_only=True).count == 0
    finally:
        stop_by_pid([holder])


def test_a_holder_learns_that_its_lease_was_revoked(cluster: Cluster) -> None:
    with cluster.client(timeout=10.0) as c, cluster.client(timeout=10.0) as other:
        holder = BlockingLock(c, "revoked", ttl=3)
        token = holder.acquire(timeout=DEADLINE)
        assert holder.held and not holder.lost
        other.revoke_lease(holder.lease_id)
        assert holder.wait_lost(timeout=DEADLINE)
        assert holder.lost and not holder.held
        assert holder.why_lost is not None and str(holder.lease_id) in holder.why_lost
        nxt = BlockingLock(other, "revoked", ttl=3)
        assert nxt.acquire(timeout=DEADLINE) > token
        nxt.release()
        holder.release()  # idempotent after the loss


# -- elections -------------------------------------------------------------------------------


def test_election_leader_observe_proclaim_resign(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.endpoints, timeout=10.0) as client:
            first = Election(client, "sched", ttl=5)
            second = Election(client, "sched", ttl=5)
            async with first.observe() as seen:
                await first.campaign("node-a", timeout=DEADLINE)
                assert first.leading
                leader = await asyncio.wait_for(seen.__anext__(), DEADLINE)
                assert (leader.key, leader.value) == (first.key, b"node-a")

                runner_up = asyncio.ensure_future(second.campaign("node-b", timeout=DEADLINE))
                while (await client.scan_prefix(first.queue_prefix, count_only=True)).count < 2:
                    await asyncio.sleep(0.02)
                assert not runner_up.done()
                now = await second.leader()
                assert now is not None and now.value == b"node-a"

                await first.proclaim("node-a:v2")
                leader = await asyncio.wait_for(seen.__anext__(), DEADLINE)
                assert (leader.key, leader.value) == (first.key, b"node-a:v2")

                await first.resign()
                await asyncio.wait_for(runner_up, DEADLINE)
                assert second.leading and not first.leading
                leader = await asyncio.wait_for(seen.__anext__(), DEADLINE)
                assert (leader.key, leader.value) == (second.key, b"node-b")
                now = await first.leader()
                assert now is not None and now.value == b"node-b"
                with pytest.raises(QuorumKVError):
                    await first.proclaim("too late")
            await second.resign()
            assert await first.leader() is None

    asyncio.run(scenario())


def test_proclaim_fails_once_the_leaders_key_is_gone(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with AsyncClient(cluster.endpoints, timeout=10.0) as client:
            e = Election(client, "gone", ttl=5)
            await e.campaign("x", timeout=DEADLINE)
            assert e.key is not None
            await client.delete(e.key)
            with pytest.raises(LeaseNotFound):
                await e.proclaim("y")
            await e.resign()

    asyncio.run(scenario())


# -- blocking watch and lease wrappers -------------------------------------------------------


def events_of(batches: list[WatchResponse]) -> list[tuple[str, bytes, bytes]]:
    return [(e.type.name, e.kv.key, e.kv.value) for b in batches for e in b.events]


def test_blocking_watch_from_now_and_from_the_past(cluster: Cluster) -> None:
    with cluster.client(timeout=10.0) as c:
        start = c.put(b"bw/a", b"1").revision
        with c.watch(b"bw/", prefix=True, prev_kv=True) as live:
            c.put(b"bw/b", b"2")
            c.put(b"other", b"x")  # outside the prefix
            c.delete(b"bw/a")
            got: list[WatchResponse] = []
            while len(events_of(got)) < 2:
                batch = live.get(timeout=DEADLINE)
                assert batch is not None
                got.append(batch)
            assert events_of(got) == [("PUT", b"bw/b", b"2"), ("DELETE", b"bw/a", b"")]
            deleted = got[-1].events[-1]
            assert deleted.prev_kv is not None and deleted.prev_kv.value == b"1"
            assert live.get(timeout=0.3) is None  # nothing more, and the watch goes on
        # From a past revision: the history is replayed first, in order.
        with c.watch(b"bw/", prefix=True, start_revision=start) as past:
            replayed: list[WatchResponse] = []
            while len(events_of(replayed)) < 3:
                batch = past.get(timeout=DEADLINE)
                assert batch is not None
                replayed.append(batch)
            assert events_of(replayed) == [("PUT", b"bw/a", b"1"), ("PUT", b"bw/b", b"2"),
                                           ("DELETE", b"bw/a", b"")]
            revisions = [e.kv.mod_revision for b in replayed for e in b.events]
            assert revisions == sorted(revisions) and revisions[0] == start
        assert list(past) == []  # closed: the iteration ends


def test_blocking_lease_keep_alive_expiry_and_revoke(cluster: Cluster) -> None:
    with cluster.client(timeout=10.0) as c:
        kept = c.grant_lease(2)
        loose = c.grant_lease(2, keep_alive=False)
        assert kept.ttl == 2 and kept.id in c.leases() and loose.id in c.leases()
        c.put(b"bl/kept", b"1", lease=kept.id)
        c.put(b"bl/loose", b"1", lease=loose.id)
        info = c.lease_ttl(kept.id, keys=True)
        assert info["id"] == kept.id and info["ttl"] == 2 and info["keys"] == [b"bl/kept"]
        with c.watch(b"bl/loose") as w:
            # Nobody keeps `loose` alive: the leader expires it and deletes its key.
            batch = w.get(timeout=DEADLINE)
            assert batch is not None
            assert [e.type for e in batch.events] == [EventType.DELETE]
        assert c.get(b"bl/loose") is None and loose.id not in c.leases()
        # `kept` was granted first, so it has outlived its TTL by now: kept alive.
        assert c.get(b"bl/kept") is not None and not kept.is_lost()
        assert c.lease_keepalive(kept.id) == 2
        kept.revoke()
        assert kept.is_lost() and c.get(b"bl/kept") is None
        with pytest.raises(LeaseNotFound):
            c.lease_ttl(kept.id)


def test_a_keep_alive_of_an_expired_lease_is_refused(cluster: Cluster) -> None:
    """Not even once: a renewal answered after expiry would let a lock holder believe it
    still holds a lock that another holder has."""
    with cluster.client(timeout=10.0) as c:
        lease = c.grant_lease(1, keep_alive=False)
        c.put(b"expired/k", b"v", lease=lease.id)
        wait_until(lambda: c.get(b"expired/k") is None, "the lease to expire")
        with pytest.raises(LeaseNotFound):
            c.lease_keepalive(lease.id)


def test_blocking_election_and_observer(cluster: Cluster) -> None:
    with cluster.client(timeout=10.0) as c:
        e = BlockingElection(c, "blocking", ttl=5)
        with e.observe() as seen:
            e.campaign("me", timeout=DEADLINE)
            first = seen.get(timeout=DEADLINE)
            assert isinstance(first, KeyValue) and first.value == b"me"
            e.proclaim("me again")
            second = seen.get(timeout=DEADLINE)
            assert second is not None and second.value == b"me again"
            assert seen.get(timeout=0.3) is None
            e.resign()
        assert e.leader() is None


def test_lock_rejects_bad_arguments(cluster: Cluster) -> None:
    with Client(cluster.endpoints) as c:
        with pytest.raises(QuorumKVError):
            BlockingLock(c, "", ttl=3)
        with pytest.raises(QuorumKVError):
            BlockingLock(c, "x", ttl=0)
