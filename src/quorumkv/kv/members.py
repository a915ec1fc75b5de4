"""The member registry: who the members of the group are and where to reach them.

Raft's configuration knows members only by id. Every node also needs each
member's name, peer address (where its Raft messages go) and client address
(where a NotLeader redirects clients). That record travels in the ``context``
of the membership change that adds the member, and the state machine keeps
it, in the same LMDB transaction as the membership itself, under the
``meta`` sub-database key ``b"member/" + id (8 bytes, big-endian)``. So it
is replicated, survives restarts, and travels inside snapshots: a node that
joins by snapshot learns every address from it, and nobody's peer list
depends on the command line it was started with.

A record is the msgpack array ``[1, name, peer_address, client_address|nil,
auto_promote]``. The first contexts ever written (format 2 stores' bootstrap
entries) were the text ``name=host:port``; they still decode, with no client
address.
"""

from __future__ import annotations

from dataclasses import dataclass

from quorumkv.errors import StorageError
from quorumkv.kv.packing import pack, unpack
from quorumkv.raft.entries import ConfState

MEMBER_PREFIX = b"member/"
_RECORD_VERSION = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberRecord:
    name: str
    peer_address: str
    """``host:port`` of the member's peer listener."""
    client_address: str | None = None
    """``host:port`` of its client listener, if it told us."""
    auto_promote: bool = False
    """A learner the leader makes a voter once its log has caught up (a joining node)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MembershipChange:
    """What a committed membership change asks of the state machine."""

    conf: ConfState
    """The configuration after the change."""
    node_id: int
    member: MemberRecord | None
    """The member's record from the change's context (None: keep what is recorded)."""
    removed: bool = False


def member_key(node_id: int) -> bytes:
    return MEMBER_PREFIX + node_id.to_bytes(8, "big")


def node_id_of_key(key: bytes) -> int:
    return int.from_bytes(key[len(MEMBER_PREFIX):], "big")


def encode_member(rec: MemberRecord) -> bytes:
    return pack([_RECORD_VERSION, rec.name, rec.peer_address, rec.client_address,
                 rec.auto_promote])


def decode_member(data: bytes) -> MemberRecord:
    """A record from a change's context or from the store; StorageError if malformed."""
    if data[:1] != b"\x95":  # not a msgpack array of 5: the first, textual contexts
        name, sep, address = data.decode(errors="replace").partition("=")
        if not sep or not name or ":" not in address:
            raise StorageError(f"malformed member record {data[:80]!r}")
        return MemberRecord(name=name, peer_address=address)
    try:
        obj = unpack(data)
    except ValueError as err:
        raise StorageError(f"malformed member record: {err}") from None
    if (not isinstance(obj, list) or len(obj) != 5 or obj[0] != _RECORD_VERSION
            or type(obj[1]) is not str or type(obj[2]) is not str
            or not (obj[3] is None or type(obj[3]) is str) or type(obj[4]) is not bool):
        raise StorageError("malformed member record")
    return MemberRecord(name=obj[1], peer_address=obj[2], client_address=obj[3],
                        auto_promote=obj[4])
