"""Partitions between real processes: a TCP proxy in front of each node's peer port.

Every node is told that its peers live at their proxies' ports, so all Raft
traffic passes through one proxy per destination. A quorumkv peer connection
carries one direction only and starts with a handshake naming its sender
(transport/peers.py), so the proxy of node D knows, for each connection,
which node S it carries traffic from: blocking the pair (S, D) closes those
connections and refuses new ones until it is unblocked. A symmetric
partition blocks both directions.

Why a proxy rather than network namespaces: it needs no privileges, so the
same suite runs as root in CI and as a developer at a desk; it cuts real
TCP connections between real processes (the nodes see resets and refused
connects, as across a real partition); and it can cut one direction only.
What it does not model is packets silently vanishing on an established
connection: a frozen node (SIGSTOP) covers that.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

HEADER = struct.Struct(">I")
HANDSHAKE = struct.Struct(">8sHQQ")  # magic, version, cluster id, sender node id


class Partitions:
    """Which directed (sender id, destination id) pairs are cut."""

    def __init__(self) -> None:
        self.blocked: set[tuple[int, int]] = set()
        self._proxies: list[PeerProxy] = []

    def register(self, proxy: PeerProxy) -> None:
        self._proxies.append(proxy)

    def cut(self, groups: list[set[int]]) -> None:
        """Only nodes within one group reach each other (both directions)."""
        blocked = set()
        for a in groups:
            for b in groups:
                if a is b:
                    continue
                blocked.update((s, d) for s in a for d in b)
        self.set_blocked(blocked)

    def heal(self) -> None:
        self.set_blocked(set())

    def set_blocked(self, blocked: set[tuple[int, int]]) -> None:
        self.blocked = blocked
        for proxy in self._proxies:
            proxy.enforce()


class PeerProxy:
    """Forwards connections to one node's peer port, unless their sender is cut off."""

    def __init__(self, node_id: int, target_port: int, partitions: Partitions) -> None:
        self.node_id = node_id
        self.target_port = target_port
        self.partitions = partitions
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: dict[asyncio.Task[None], int] = {}
        partitions.register(self)

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    def enforce(self) -> None:
        for task, sender in list(self._links.items()):
            if (sender, self.node_id) in self.partitions.blocked:
                task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._links)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        upstream: asyncio.StreamWriter | None = None
        try:
            head = await asyncio.wait_for(reader.readexactly(HEADER.size + HANDSHAKE.size), 10)
            sender = HANDSHAKE.unpack(head[HEADER.size:])[3]
            if (sender, self.node_id) in self.partitions.blocked:
                return
            self._links[task] = sender
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
            upstream.write(head)
            await asyncio.gather(_pump(reader, upstream), _pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # cut by enforce() or close(): this task is ours to end quietly
        finally:
            self._links.pop(task, None)
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    with contextlib.suppress(Exception):
                        await w.wait_closed()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()
