"""Members as the membership ops report them: strict reads, and the client methods' requests."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from quorumkv.client import DEFAULT_TOKEN, AsyncClient, Client, Member, Membership
from quorumkv.client.members import (
    digest_from_wire,
    member_from_wire,
    member_result_from_wire,
    membership_from_wire,
)
from quorumkv.client.protocol import (
    DigestRequest,
    Header,
    LeaveRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    Request,
    StatusRequest,
)
from quorumkv.errors import ProtocolError

HEADER = {"revision": 12, "raft_term": 3, "member": "n1", "applied_index": 40}
N1 = {"id": 7, "name": "n1", "peer_address": "127.0.0.1:7001",
      "client_address": "127.0.0.1:7101", "voter": True, "auto_promote": False}
N4 = {"id": 9, "name": "n4", "peer_address": "[::1]:7004", "client_address": None,
      "voter": False, "auto_promote": True}


def test_a_good_member_is_read() -> None:
    assert member_from_wire(N1) == Member(id=7, name="n1", peer_address="127.0.0.1:7001",
                                          client_address="127.0.0.1:7101", voter=True,
                                          auto_promote=False)
    assert member_from_wire(N4).client_address is None


def test_unknown_member_fields_are_ignored_for_newer_servers() -> None:
    assert member_from_wire(N4 | {"status": "joining", "lag": 17, "shiny": [1]}) == (
        member_from_wire(N4))


BAD_MEMBERS: list[tuple[object, str]] = [
    ([N1], "must be a map"),
    (None, "must be a map"),
    ({k: v for k, v in N1.items() if k != "id"}, "missing field 'id'"),
    ({k: v for k, v in N1.items() if k != "auto_promote"}, "missing field 'auto_promote'"),
    (N1 | {"id": "7"}, "'id'"),
    (N1 | {"id": -1}, "'id'"),
    (N1 | {"id": True}, "'id'"),
    (N1 | {"name": None}, "'name' must be a string"),
    (N1 | {"name": b"n1"}, "'name' must be a string"),
    (N1 | {"peer_address": 7001}, "'peer_address' must be a string"),
    (N1 | {"client_address": 7101}, "'client_address' must be a string or nil"),
    (N1 | {"voter": 1}, "'voter' must be a boolean"),
    (N1 | {"auto_promote": "no"}, "'auto_promote' must be a boolean"),
]


@pytest.mark.parametrize(("obj", "message"), BAD_MEMBERS)
def test_a_malformed_member_is_a_protocol_error(obj: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        member_from_wire(obj)


def test_membership_results() -> None:
    listing, header = membership_from_wire({"members": [N1, N4], "leader": "n1",
                                            "cluster_id": 5, "header": HEADER})
    assert listing == Membership(members=(member_from_wire(N1), member_from_wire(N4)),
                                 leader="n1", cluster_id=5)
    assert header == Header.from_wire(HEADER)
    leaderless, _ = membership_from_wire({"members": [], "leader": None, "cluster_id": 5,
                                          "header": HEADER})
    assert leaderless.leader is None and leaderless.members == ()
    for key in ("member", "removed", "left"):
        member, _ = member_result_from_wire({key: N4, "members": [N1], "header": HEADER}, key)
        assert member == member_from_wire(N4)


@pytest.mark.parametrize("body", [
    {"members": [N1], "leader": "n1", "cluster_id": 5},
    {"members": [N1], "leader": "n1", "cluster_id": 5, "header": {}},
    {"members": N1, "leader": "n1", "cluster_id": 5, "header": HEADER},
    {"members": [N1 | {"voter": None}], "leader": "n1", "cluster_id": 5, "header": HEADER},
    {"members": [N1], "leader": 1, "cluster_id": 5, "header": HEADER},
    {"members": [N1], "leader": "n1", "cluster_id": "5", "header": HEADER},
    "not a map",
])
def test_a_malformed_member_list_is_a_protocol_error(body: object) -> None:
    with pytest.raises(ProtocolError):
        membership_from_wire(body)


def test_a_member_result_without_its_member_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="missing field 'left'"):
        member_result_from_wire({"member": N1, "header": HEADER}, "left")
    with pytest.raises(ProtocolError, match="'removed'"):
        member_result_from_wire({"removed": [N1], "header": HEADER}, "removed")


def test_digest_results() -> None:
    body = {"digest": "ab12", "applied_index": 40, "revision": 12, "header": HEADER,
            "extra": True}
    assert digest_from_wire(body) == ({"digest": "ab12", "applied_index": 40, "revision": 12},
                                      Header.from_wire(HEADER))
    for bad in ({"digest": b"ab12"}, {"applied_index": -1}, {"revision": None}):
        with pytest.raises(ProtocolError):
            digest_from_wire(body | bad)


# -- the client methods, against a stand-in for the retrying caller ---------------------


class FakeCaller:
    """Records each request and answers it from ``answers`` (keyed by request type)."""

    def __init__(self, answers: dict[type, dict[str, Any]]) -> None:
        self.answers = answers
        self.requests: list[Request] = []

    async def call(self, req: Request) -> dict[str, Any]:
        self.requests.append(req)
        return self.answers[type(req)]

    async def close(self) -> None:
        pass


ANSWERS: dict[type, dict[str, Any]] = {
    MemberListRequest: {"members": [N1, N4], "leader": "n1", "cluster_id": 5, "header": HEADER},
    MemberAddRequest: {"member": N4, "members": [N1, N4], "cluster_id": 5, "header": HEADER},
    MemberRemoveRequest: {"removed": N4, "members": [N1], "header": HEADER},
    MemberPromoteRequest: {"member": N4 | {"voter": True, "auto_promote": False},
                           "members": [N1, N4], "header": HEADER},
    LeaveRequest: {"left": N1, "header": HEADER | {"revision": 30}},
    DigestRequest: {"digest": "ab12", "applied_index": 40, "revision": 12, "header": HEADER},
    StatusRequest: {"node": {"name": "n1"}, "members": [], "leader": "n1", "header": HEADER},
}


def test_async_client_membership_methods() -> None:
    fake = FakeCaller(ANSWERS)

    async def run() -> None:
        async with AsyncClient(["127.0.0.1:1"]) as c:
            c._caller = fake  # type: ignore[assignment]
            assert await c.member_list() == [member_from_wire(N1), member_from_wire(N4)]
            assert (await c.membership()).leader == "n1"
            assert await c.member_add("n4", "[::1]:7004") == member_from_wire(N4)
            await c.member_add("n4", "[::1]:7004", client_address="[::1]:7104", learner=True,
                               token="t")
            assert await c.member_remove("n4", token="t") == member_from_wire(N4)
            promoted = await c.member_promote("n4")
            assert promoted.voter and not promoted.auto_promote
            assert (await c.leave()).name == "n1"
            assert c.revision == 30  # every answer's header moves the client's revision
            assert await c.digest() == {"digest": "ab12", "applied_index": 40, "revision": 12}
            await c.status()
            await c.status(local=True)

    asyncio.run(run())
    assert fake.requests == [
        MemberListRequest(), MemberListRequest(),
        MemberAddRequest(name="n4", peer_address="[::1]:7004", token=DEFAULT_TOKEN),
        MemberAddRequest(name="n4", peer_address="[::1]:7004", client_address="[::1]:7104",
                         learner=True, token="t"),
        MemberRemoveRequest(name="n4", token="t"),
        MemberPromoteRequest(name="n4", token=DEFAULT_TOKEN),
        LeaveRequest(token=DEFAULT_TOKEN),
        DigestRequest(), StatusRequest(local=False), StatusRequest(local=True)]


def test_blocking_client_membership_methods() -> None:
    fake = FakeCaller(ANSWERS)
    with Client(["127.0.0.1:1"]) as c:
        c._client._caller = fake  # type: ignore[assignment]
        assert [m.name for m in c.member_list()] == ["n1", "n4"]
        assert c.membership().cluster_id == 5
        assert c.member_add("n4", "[::1]:7004", learner=True).name == "n4"
        assert c.member_remove("n4").name == "n4"
        assert c.member_promote("n4").voter
        assert c.leave(token="t").name == "n1"
        assert c.digest()["digest"] == "ab12"
        assert c.status(local=True)["leader"] == "n1"
    assert fake.requests[2] == MemberAddRequest(name="n4", peer_address="[::1]:7004",
                                                learner=True, token=DEFAULT_TOKEN)
    assert fake.requests[5] == LeaveRequest(token="t")
    assert fake.requests[-1] == StatusRequest(local=True)
