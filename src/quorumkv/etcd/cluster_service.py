"""etcd's Cluster service (``/etcdserverpb.Cluster/*``): the member list and its changes.

Members. A member's etcd ID is its quorumkv node id (the same id every
ResponseHeader carries as ``member_id``); its peer URL is its peer address;
its client URL is its *etcd* address, since etcdctl's ``--cluster`` flag
dials every member's client URLs with etcd's protocol. A member knows its
own etcd address; the others' come from ``serve --etcd-urls`` (a member
missing there is listed with no client URL, which etcdctl skips).

Who may change the membership. quorumkv's credential for membership
changes is the cluster token, which etcdctl cannot send. A change is
allowed when the call carries the cluster token in the gRPC metadata key
``cluster-token`` (for programs), or, with auth enabled, when the caller is
a user with the role ``root`` (which is what etcd asks for). With auth
disabled and no cluster token, it is refused: otherwise anyone who can
reach the etcd port could add or remove members, which the cluster token
exists to prevent. Reading the member list needs nothing, as in etcd.

MemberAdd. etcd's request has no name, but a quorumkv member's name is its
identity (its id derives from it), so the new member is named after its
peer address (``m-HOST-PORT``, given back in the answer): start it with
that ``--name``, that peer address and ``--join``. It is always added as a
learner, as quorumkv's own ``member add`` does; without ``isLearner`` the
leader promotes it once it has caught up (etcd would add a voter at once).

MemberUpdate would change a member's peer URL; quorumkv's peer addresses
are fixed for a member's life (its record travels with the change that
added it), so it is answered Unimplemented with the way to do it instead.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from quorumkv.client.protocol import (
    MemberAddRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MoveLeaderRequest,
    Request,
)
from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import EtcdService, applied_here, unary
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.header import response_header
from quorumkv.etcd.identity import caller_of
from quorumkv.server.http_forward import forwarder_for

if TYPE_CHECKING:
    from quorumkv.server.node import Node

CLUSTER_TOKEN_KEY: Final = "cluster-token"
"""The gRPC metadata key a program may put the cluster token under."""

NEEDS_CREDENTIAL: Final = ee.RpcError(
    ee.Code.PERMISSION_DENIED,
    "quorumkv: membership and leadership changes need the cluster token (gRPC metadata "
    "'cluster-token') or, with auth enabled, the root user; or use `quorumkv member ...`")
MEMBER_UPDATE_UNSUPPORTED: Final = ee.RpcError(
    ee.Code.UNIMPLEMENTED,
    "quorumkv: a member's peer address cannot be changed; remove the member and add it "
    "again with the new address")
ONE_PEER_URL: Final = ee.RpcError(
    ee.Code.INVALID_ARGUMENT,
    "etcdserver: given member URLs are invalid (quorumkv: exactly one peer URL, "
    "http(s)://HOST:PORT)")

_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _metadata(context: Any, key: str) -> str | None:
    for k, value in context.invocation_metadata() or ():
        if k == key:
            return value if isinstance(value, str) else None
    return None


def change_token(node: Node, context: Any) -> str:
    """The cluster token to carry out a membership or leadership change for this call;
    EtcdError unless the call may make one (see the module's docstring)."""
    expected = node.config.cluster_token
    given = _metadata(context, CLUSTER_TOKEN_KEY)
    if given is not None:
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ee.EtcdError(NEEDS_CREDENTIAL)
        return expected
    if not node.auth.enabled:
        raise ee.EtcdError(NEEDS_CREDENTIAL)
    caller = caller_of(node, context)
    node.auth.check_root(caller.user)  # Unauthenticated / PermissionDenied as etcd's
    return expected


def etcd_client_url(node: Node, name: str) -> str | None:
    """``http(s)://HOST:PORT`` of member ``name``'s etcd port, if known here."""
    config = node.config
    if name == config.name:
        server = node.etcd_server
        address = server.address if server is not None else config.etcd_address
    else:
        address = config.etcd_addresses.get(name)
    if not address:
        return None
    return f"{'https' if config.cert_file is not None else 'http'}://{address}"


def etcd_member(node: Node, member: Mapping[str, Any]) -> Any:
    """An etcd Member from a member map of the membership's answers (``member_wire``)."""
    config = node.config
    peer_scheme = "https" if config.peer_cert_file is not None else "http"
    client = etcd_client_url(node, str(member["name"]))
    peer = member.get("peer_address")
    return etcd_proto().rpc_pb2.Member(
        ID=int(member["id"]), name=str(member["name"]),
        peerURLs=[f"{peer_scheme}://{peer}"] if peer else [],
        clientURLs=[client] if client else [], isLearner=not member.get("voter", False))


def etcd_members(node: Node, members: list[Mapping[str, Any]]) -> list[Any]:
    return [etcd_member(node, m) for m in members]


def member_name(node: Node, member_id: int) -> str:
    """The name of the member with etcd ID ``member_id``; etcd's "member not found"."""
    if member_id not in node.conf.members():
        raise ee.EtcdError(ee.MEMBER_NOT_FOUND)
    rec = node.registry.get(member_id)
    if rec is None:
        raise ee.EtcdError(ee.MEMBER_NOT_FOUND)
    return rec.name


def peer_address_of(urls: list[str]) -> tuple[str, str]:
    """The one peer URL's ``HOST:PORT``, and the member name derived from it."""
    if len(urls) != 1:
        raise ee.EtcdError(ONE_PEER_URL)
    parts = urlsplit(urls[0])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ee.EtcdError(ONE_PEER_URL)
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise ee.EtcdError(ONE_PEER_URL)
    host = parts.hostname
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    name = _NAME_UNSAFE.sub("-", f"m-{host}-{port}")[:63]
    return address, name


async def on_leader(node: Node, local: Callable[[], Awaitable[dict[str, Any]]],
                    remote: Request) -> dict[str, Any]:
    """Run a membership or leadership change here if this member leads, else on the leader
    (the request carries the cluster token, the leader's only check).

    As etcd's member does, the answer waits until this member has applied the change
    too (up to the request timeout), so that its own member list, which etcdctl reads
    serializably, already shows it."""
    result = await forwarder_for(node).call(local, remote, changes=True)
    await applied_here(node, result)
    return result


class ClusterService(EtcdService):
    """The handlers of etcd's Cluster service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_ClusterServicer_to_server(self, server)

    @unary(None)
    async def MemberList(self, request: Any, context: Any) -> Any:  # noqa: N802 (etcd's name)
        node = self.node
        if request.linearizable:
            # etcd reads the list through the log then; a read barrier is quorumkv's way.
            await node.read_barrier()
        listed = node.membership.list()
        return etcd_proto().rpc_pb2.MemberListResponse(
            header=response_header(node), members=etcd_members(node, listed["members"]))

    @unary(None)
    async def MemberAdd(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        token = change_token(node, context)
        peer, name = peer_address_of(list(request.peerURLs))
        learner = bool(request.isLearner)
        result = await on_leader(
            node, lambda: node.membership.add(name, peer, None, learner=learner, token=token),
            MemberAddRequest(name=name, peer_address=peer, learner=learner, token=token))
        return etcd_proto().rpc_pb2.MemberAddResponse(
            header=response_header(node), member=etcd_member(node, result["member"]),
            members=etcd_members(node, result["members"]))

    @unary(None)
    async def MemberRemove(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        token = change_token(node, context)
        name = member_name(node, request.ID)
        result = await on_leader(node, lambda: node.membership.remove(name, token=token),
                                 MemberRemoveRequest(name=name, token=token))
        return etcd_proto().rpc_pb2.MemberRemoveResponse(
            header=response_header(node), members=etcd_members(node, result["members"]))

    @unary(None)
    async def MemberUpdate(self, request: Any, context: Any) -> Any:  # noqa: N802
        change_token(self.node, context)
        member_name(self.node, request.ID)
        raise ee.EtcdError(MEMBER_UPDATE_UNSUPPORTED)

    @unary(None)
    async def MemberPromote(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        token = change_token(node, context)
        name = member_name(node, request.ID)
        if request.ID in node.conf.voters:
            raise ee.EtcdError(ee.MEMBER_NOT_LEARNER)
        result = await on_leader(node, lambda: node.membership.promote(name, token=token),
                                 MemberPromoteRequest(name=name, token=token))
        return etcd_proto().rpc_pb2.MemberPromoteResponse(
            header=response_header(node), members=etcd_members(node, result["members"]))


async def move_leader(node: Node, context: Any, target_id: int) -> dict[str, Any]:
    """Maintenance's MoveLeader: hand leadership to the voter ``target_id``."""
    token = change_token(node, context)
    name = member_name(node, target_id)
    if target_id not in node.conf.voters:
        raise ee.EtcdError(ee.BAD_LEADER_TRANSFEREE)
    return await on_leader(node, lambda: node.membership.move_leader(name, token=token),
                           MoveLeaderRequest(name=name, token=token))
