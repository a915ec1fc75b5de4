"""Watches on a real cluster: order, exactly once, history, compaction, failover, slow readers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest
from cluster_harness import running_cluster

from quorumkv.client import AsyncClient, Client
from quorumkv.client.coordination_wire import WatchResponse
from quorumkv.errors import Compacted, QuorumKVError
from quorumkv.kv.results import EventType
from quorumkv.transport.framing import FrameDecoder, encode_frame

pytestmark = pytest.mark.timeout(300)


def _config(tmp_path: Path, **settings: object) -> list[str]:
    path = tmp_path / "watch.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return ["--config", str(path)]


async def _collect(w: object, until: int, timeout: float = 60.0) -> list[WatchResponse]:
    """Responses until one reaches revision ``until``."""
    out: list[WatchResponse] = []
    async with asyncio.timeout(timeout):
        async for resp in w:  # type: ignore[attr-defined]
            out.append(resp)
            if resp.revision >= until:
                return out
    return out


def test_watch_from_now_and_from_the_past_in_order_exactly_once(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                first = await c.put("jobs/0", "a")
                await c.put("other", "x")
                second = await c.put("jobs/1", "b")
                async with c.watch("jobs/", prefix=True, prev_kv=True) as live:
                    r2 = await c.put("jobs/0", "a2")
                    d = await c.delete("jobs/1", prev_kv=True)
                    await c.put("nope", "y")
                    last = await c.put("jobs/2", "c")
                    got = await _collect(live, last.revision)
                events = [e for r in got for e in r.events]
                assert [(e.type, e.kv.key, e.kv.mod_revision) for e in events] == [
                    (EventType.PUT, b"jobs/0", r2.revision),
                    (EventType.DELETE, b"jobs/1", d.revision),
                    (EventType.PUT, b"jobs/2", last.revision)]
                assert events[0].prev_kv is not None and events[0].prev_kv.value == b"a"
                assert events[1].prev_kv is not None and events[1].prev_kv.value == b"b"
                # From the past: the history replays, then live events follow without a gap.
                async with c.watch("jobs/", prefix=True, start_revision=first.revision) as past:
                    later = await c.put("jobs/3", "d")
                    replayed = await _collect(past, later.revision)
                revisions = [e.kv.mod_revision for r in replayed for e in r.events]
                # Every change under jobs/ since the start, once each, in order; the
                # unrelated keys' revisions are not there.
                assert revisions == [first.revision, second.revision, r2.revision, d.revision,
                                     last.revision, later.revision]
        asyncio.run(main())


def test_a_compacted_start_revision_is_refused_with_the_compact_revision(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                for i in range(6):
                    await c.put("k", str(i))
                top = await c.put("k", "last")
                await c.compact(top.revision - 1)
                with pytest.raises(Compacted) as refused:
                    async with c.watch("k", start_revision=2):
                        pass
                assert refused.value.details["compact_revision"] == top.revision - 1
                async with c.watch("k", start_revision=top.revision) as w:
                    got = await _collect(w, top.revision)
                assert got[0].events[0].kv.value == b"last"
        asyncio.run(main())


def test_progress_notifications_reach_an_idle_watcher(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=_config(tmp_path, watch_progress_s=0.5)) as cluster:
        cluster.leader_name()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                r = await c.put("elsewhere", "v")
                async with c.watch("quiet/", prefix=True, progress_notify=True) as w:
                    await c.put("elsewhere", "w")
                    async with asyncio.timeout(30):
                        async for resp in w:
                            assert resp.progress and not resp.events
                            if resp.revision >= r.revision + 1:
                                break
        asyncio.run(main())


def test_every_event_exactly_once_across_node_failures(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        acked: list[tuple[int, bytes]] = []
        stop = threading.Event()

        def write() -> None:
            with Client(cluster.endpoints, timeout=30.0) as c:
                i = 0
                while not stop.is_set():
                    value = f"{i:06d}".encode()
                    # An unknown outcome may or may not show up: not counted.
                    with contextlib.suppress(QuorumKVError):
                        acked.append((c.put(f"w/{i % 7}", value).revision, value))
                    i += 1

        async def wait(cond: object, timeout: float = 90.0) -> None:
            assert callable(cond)
            async with asyncio.timeout(timeout):
                while not cond():
                    await asyncio.sleep(0.05)

        async def main() -> tuple[list[tuple[int, bytes]], int]:
            seen: list[tuple[int, bytes]] = []
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                start = (await c.put("w/start", "0")).revision
                async with c.watch("w/", prefix=True, start_revision=start + 1) as w:

                    async def consume() -> None:
                        async for resp in w:
                            seen.extend((e.kv.mod_revision, e.kv.value) for e in resp.events)

                    consumer = asyncio.ensure_future(consume())
                    writer = threading.Thread(target=write, daemon=True)
                    writer.start()
                    try:
                        await wait(lambda: len(seen) >= 30)
                        # The node serving the watch dies (then comes back), then the leader.
                        serving = cluster.node(str((c.server_info or {}).get("name")))
                        serving.kill()
                        count = len(seen)
                        await wait(lambda: len(seen) >= count + 30)
                        serving.start()
                        cluster.leader_name()
                        leader = cluster.node(cluster.leader_name())
                        leader.kill()
                        count = len(seen)
                        await wait(lambda: len(seen) >= count + 30)
                        leader.start()
                    finally:
                        stop.set()
                        await asyncio.to_thread(writer.join, 60)
                    final = (await c.put("w/end", "x")).revision
                    await wait(lambda: bool(seen) and seen[-1][0] >= final)
                    consumer.cancel()
                return seen, final

        seen, final = asyncio.run(main())
        revisions = [r for r, _ in seen]
        assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)
        assert revisions[-1] == final
        delivered = set(seen)
        missing = [a for a in acked if a not in delivered]
        assert not missing, f"{len(missing)} acknowledged writes never seen, e.g. {missing[:5]}"


def test_a_watcher_that_does_not_read_is_cancelled_and_the_node_keeps_serving(
        tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=_config(tmp_path, watch_buffer_events=50)) as cluster:
        leader = cluster.node(cluster.leader_name())
        # A raw client that asks for a watch and then never reads a byte.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # A small window before connecting, so the node's writes back up quickly.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", leader.client_port))
            request = [1, "watch", {"key": b"slow/", "range_end": b"slow0"}]
            sock.sendall(encode_frame(msgpack.packb(request, use_bin_type=True)))
            big = b"v" * 16384
            with Client([leader.client_address], timeout=30.0) as c:
                time.sleep(0.5)
                for i in range(600):  # far more than the socket buffers and 50 events hold
                    c.put(f"slow/{i}", big)
                # The node still serves: its apply loop never waited for the watcher.
                assert c.get("slow/599") is not None
            sock.settimeout(30)
            decoder = FrameDecoder(16 << 20)
            messages = []
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                data = sock.recv(1 << 16)
                if not data:
                    break
                for frame in decoder.feed(data):
                    messages.append(msgpack.unpackb(frame, raw=False))
                if any(m[2].get("canceled") for m in messages if m[1]):
                    break
            ends = [m[2] for m in messages if m[1] and m[2].get("canceled")]
            assert ends and ends[0]["code"] == "watch_canceled", messages[-1:]
            assert "too slow" in ends[0]["reason"]
            delivered = [e for m in messages if m[1] for e in m[2].get("events", [])]
            assert len(delivered) < 600  # it was cut off, not fed everything
        finally:
            sock.close()


def test_a_watch_on_a_frozen_node_resumes_elsewhere(tmp_path: Path) -> None:
    with running_cluster(tmp_path, extra=_config(tmp_path, watch_progress_s=0.5)) as cluster:
        cluster.leader_name()

        async def main() -> None:
            async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
                async with c.watch("f/", prefix=True) as w:
                    frozen = cluster.node(str((c.server_info or {}).get("name")))
                    frozen.pause()  # its connection stays open; it just says nothing
                    try:
                        others = [n.client_address for n in cluster.nodes if n is not frozen]
                        async with AsyncClient(others, timeout=30.0) as writer:
                            put = await writer.put("f/after", "v")
                        got = await _collect(w, put.revision)
                    finally:
                        frozen.resume()
                keys = [e.kv.key for r in got for e in r.events]
                assert keys == [b"f/after"]
                assert all(not r.progress for r in got)  # progress stays internal
        asyncio.run(main())
