"""Garbage thrown at a live node's client and peer ports changes nothing and kills nothing.

The garbage never holds a valid write (no "write", "leave" or membership op is ever sent;
peer messages that decode are addressed to no member), so every replica's digest must be
exactly what it was before.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from cluster_harness import Cluster, running_cluster
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_wire import RawConnection
from strategies import FIELD_NAMES, INTS, MSGPACK_VALUES, peer_shaped, request_shaped

from quorumkv.client import Client
from quorumkv.client.protocol import OPS, HelloRequest
from quorumkv.server.config import NodeConfig, node_id_for
from quorumkv.transport.framing import HEADER
from quorumkv.transport.peers import HANDSHAKE, MAGIC, PROTOCOL_VERSION

pytestmark = pytest.mark.timeout(300)

_UNSAFE = {"write", "leave", "member_add", "member_remove", "member_promote"}
SAFE_OPS = [op for op in OPS if op not in _UNSAFE]
_MEMBER_IDS = {node_id_for(f"n{i}") for i in range(1, 4)}


def _pack(value: object) -> bytes:
    data = msgpack.packb(value, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def _frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def _safe(req: list[Any]) -> bool:
    return not (isinstance(req[1], str) and req[1] in _UNSAFE)


_SAFE_REQUESTS = request_shaped(SAFE_OPS).filter(_safe)

CLIENT_GARBAGE = st.one_of(
    st.binary(min_size=1, max_size=300),  # unframed bytes
    st.lists(_SAFE_REQUESTS.map(lambda r: _frame(_pack(r))), min_size=1, max_size=5)
    .map(b"".join),  # requests of every wrong type
    MSGPACK_VALUES.map(lambda v: _frame(_pack(v))),  # any msgpack value
    st.builds(lambda n, tail: HEADER.pack(n) + tail,  # an oversized length prefix
              st.integers((4 << 20) + 1, (1 << 32) - 1), st.binary(max_size=50)),
    st.builds(lambda r, cut: _frame(_pack(r))[:cut],  # a truncated frame
              _SAFE_REQUESTS, st.integers(1, 50)),
    st.builds(lambda rid, field, value: _frame(_pack([rid, "range", {field: value}])),
              INTS, st.sampled_from(FIELD_NAMES), MSGPACK_VALUES),
)


def _peer_frames(sender: int) -> st.SearchStrategy[bytes]:
    stranger = st.integers(0, (1 << 64) - 1).filter(lambda i: i not in _MEMBER_IDS)
    # Messages that may decode: from the handshake's sender, addressed to no member.
    header = st.builds(lambda g, dst, term: [g, sender, dst, term], INTS, stranger, INTS)
    return st.one_of(
        st.builds(lambda tag, body: _frame(bytes([tag]) + body),
                  st.integers(0, 255), st.binary(max_size=100)),
        peer_shaped(header).map(lambda m: _frame(b"\x00" + _pack(m))),
        st.builds(lambda tag, v: _frame(bytes([tag]) + _pack(v)),
                  st.sampled_from([2, 3, 4]), MSGPACK_VALUES),
        st.builds(HEADER.pack, st.integers(0, (1 << 32) - 1)),
    )


def _peer_garbage(cluster_id: int) -> st.SearchStrategy[bytes]:
    sender = 0xF00D_F00D
    good_handshake = _frame(HANDSHAKE.pack(MAGIC, PROTOCOL_VERSION, cluster_id, sender))
    return st.one_of(
        st.binary(min_size=1, max_size=300),
        st.builds(lambda frames: good_handshake + b"".join(frames),
                  st.lists(_peer_frames(sender), min_size=1, max_size=5)),
        st.builds(lambda magic, version, cid, snd, tail:
                  _frame(HANDSHAKE.pack(magic, version, cid, snd)) + tail,
                  st.one_of(st.just(MAGIC), st.binary(min_size=8, max_size=8)),
                  st.integers(0, 65535), st.one_of(st.just(cluster_id), INTS.filter(
                      lambda i: 0 <= i < 1 << 64)),
                  st.sampled_from(sorted(_MEMBER_IDS)), st.binary(max_size=50)),
    )


def _send(port: int, data: bytes, linger: bool) -> socket.socket | None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        s.sendall(data)
    if linger:
        return s  # left open for a while: many connections at once
    s.close()
    return None


def _stable_digests(cluster: Cluster, timeout: float = 30.0) -> dict[str, tuple[str, int]]:
    """Every node's (digest, revision), once they all agree."""
    deadline = time.monotonic() + timeout
    while True:
        got: dict[str, tuple[str, int]] = {}
        for n in cluster.nodes:
            with contextlib.suppress(Exception), Client([n.client_address], timeout=5) as c:
                d = c.digest()
                got[n.name] = (d["digest"], d["revision"])
        if len(got) == len(cluster.nodes) and len(set(got.values())) == 1:
            return got
        assert time.monotonic() < deadline, f"replicas never agreed: {got}"
        time.sleep(0.2)


def test_garbage_on_client_and_peer_ports_changes_nothing(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as cluster:
        cluster.leader_name()
        with cluster.client(timeout=10.0) as c:
            for i in range(20):
                c.put(f"fuzz/{i:02d}", f"value-{i}")
        before = _stable_digests(cluster)
        peers = {n.name: ("127.0.0.1", n.peer_port) for n in cluster.nodes}
        cluster_id = NodeConfig(name="n1", data_dir=tmp_path / "unused",
                                initial_cluster=peers).cluster_id

        @settings(max_examples=200, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(target=st.integers(0, len(cluster.nodes) - 1),
               attacks=st.lists(st.tuples(st.booleans(), st.booleans(), st.data()),
                                min_size=1, max_size=6))
        def throw(target: int, attacks: list[tuple[bool, bool, st.DataObject]]) -> None:
            node = cluster.nodes[target]
            held = []
            for to_client, linger, data in attacks:
                if to_client:
                    payload = data.draw(CLIENT_GARBAGE)
                    s = _send(node.client_port, payload, linger)
                else:
                    payload = data.draw(_peer_garbage(cluster_id))
                    s = _send(node.peer_port, payload, linger)
                if s is not None:
                    held.append(s)
            for s in held:
                s.close()
            # The node answers at once, every time.
            probe = RawConnection(node.client_port)
            try:
                probe.send(1, HelloRequest())
                assert probe.response().ok
            finally:
                probe.close()

        throw()
        for n in cluster.nodes:
            assert n.running(), f"{n.name} died; see {n.log_path}"
        assert _stable_digests(cluster) == before
        # Every node still serves reads and writes.
        with cluster.client(timeout=10.0) as c:
            c.put("after", "garbage")
        for n in cluster.nodes:
            with Client([n.client_address], timeout=10.0) as c:
                kv = c.get("fuzz/07")
                assert kv is not None and kv.value == b"value-7"
                assert c.get("after") is not None
        for n in cluster.nodes:
            text = n.log_path.read_text(errors="replace")
            assert "Traceback" not in text, f"{n.name} logged a traceback: {n.log_path}"
