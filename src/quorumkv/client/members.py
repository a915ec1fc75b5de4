"""The cluster's members as the membership ops report them (wire shapes in ``protocol.py``).

Reading checks every field a client relies on (ProtocolError: the server
sent nonsense) but ignores fields it does not know, so a newer server can
add some.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from quorumkv.client.fields import MAX_UINT64, FieldReader, type_name
from quorumkv.client.results_wire import Header
from quorumkv.errors import ProtocolError

__all__ = [
    "DEFAULT_TOKEN",
    "Member",
    "Membership",
    "digest_from_wire",
    "member_from_wire",
    "member_result_from_wire",
    "membership_from_wire",
]

DEFAULT_TOKEN: Final = "quorumkv"
"""The cluster token a node starts with unless configured otherwise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Member:
    id: int
    name: str
    peer_address: str
    client_address: str | None
    voter: bool
    auto_promote: bool
    """A learner the leader promotes to voter once its log has caught up (a joining node);
    False for a learner added as one, which stays a learner until promoted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """The answer to ``member_list``: who is in the cluster, and who leads it."""

    members: tuple[Member, ...]
    leader: str | None
    """The leader's name, if the answering node knows of one."""
    cluster_id: int


def _optional_string(f: FieldReader, name: str) -> str | None:
    value = f.raw(name)
    if value is not None and type(value) is not str:
        raise f.fail(f"{name!r} must be a string or nil, not {type_name(value)}")
    assert value is None or isinstance(value, str)
    return value


def member_from_wire(obj: object) -> Member:
    f = FieldReader(obj, "member", ProtocolError)
    return Member(id=f.integer("id"), name=f.string("name"),
                  peer_address=f.string("peer_address"),
                  client_address=_optional_string(f, "client_address"),
                  voter=f.boolean("voter"), auto_promote=f.boolean("auto_promote"))


def _result(obj: object) -> tuple[FieldReader, Header]:
    f = FieldReader(obj, "result", ProtocolError)
    return f, Header.from_wire(f.mapping("header"))


def _members(f: FieldReader) -> tuple[Member, ...]:
    return tuple(member_from_wire(m) for m in f.array("members"))


def membership_from_wire(obj: object) -> tuple[Membership, Header]:
    """A ``member_list`` result."""
    f, header = _result(obj)
    return Membership(members=_members(f), leader=_optional_string(f, "leader"),
                      cluster_id=f.integer("cluster_id")), header


def member_result_from_wire(obj: object, key: str) -> tuple[Member, Header]:
    """The member under ``key`` of a member_add ("member"), member_remove ("removed"),
    member_promote ("member") or leave ("left") result."""
    f, header = _result(obj)
    return member_from_wire(f.mapping(key)), header


def digest_from_wire(obj: object) -> tuple[dict[str, Any], Header]:
    """A ``digest`` result: ``{"digest", "applied_index", "revision"}`` of the answering node."""
    f, header = _result(obj)
    return {"digest": f.string("digest"),
            "applied_index": f.integer("applied_index", high=MAX_UINT64),
            "revision": f.integer("revision")}, header
