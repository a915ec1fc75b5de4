"""etcd's Lease service (``/etcdserverpb.Lease/*``): grant, revoke, keep-alive, time-to-live.

quorumkv's leases are etcd's (server/leases.py): a grant and a revoke are
writes through the log (calls.py ``submit_write``, so a follower sends them
on to the leader); keep-alives and time-to-live are answered by the leader,
which alone keeps the deadlines, so a follower sends each on to it over the
client protocol as the HTTP API does (http_lease.py); the list is this
member's own.

As etcd's:

- LeaseGrant with ``ID`` 0 picks a random 63-bit id; a TTL above etcd's
  maximum is "too large lease TTL"; a TTL below the cluster's minimum (two
  election timeouts, which an election alone must not outlast) is granted
  as that minimum, and the answer says so.
- LeaseKeepAlive is a stream: one answer per request, in order, with the
  lease's TTL, or TTL 0 for a lease that is gone (expired or revoked).
- LeaseTimeToLive of a lease that is gone answers TTL -1 (etcdctl prints
  "already expired"), not an error.
"""

from __future__ import annotations

import math
import secrets
from typing import TYPE_CHECKING, Any, Final

from quorumkv.client.coordination_wire import LeaseKeepAliveRequest, LeaseTimeToLiveRequest
from quorumkv.errors import InvalidArgument, LeaseNotFound
from quorumkv.etcd import errors as ee
from quorumkv.etcd.calls import WRITE, EtcdService, streaming, submit_write, unary
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.header import response_header
from quorumkv.etcd.identity import Caller, caller_of
from quorumkv.etcd.watch_service import has_leader, requires_leader
from quorumkv.kv.commands import MAX_LEASE_TTL, LeaseGrant, LeaseRevoke
from quorumkv.server.http_forward import forwarder_for

if TYPE_CHECKING:
    from quorumkv.server.node import Node

GONE_TTL: Final = -1
"""LeaseTimeToLive's TTL for a lease that does not exist (etcd's)."""


def _lease_id(value: int) -> int:
    """A lease id of a request: quorumkv's are 1 to 2**63-1, as etcd's in practice."""
    if value <= 0:
        raise ee.EtcdError(ee.LEASE_NOT_FOUND)
    return value


def _signed_in(node: Node, context: Any) -> Caller:
    caller = caller_of(node, context)
    if node.auth.enabled:
        node.auth.check_signed_in(caller.user)
    return caller


async def keepalive(node: Node, caller: Caller, lease_id: int) -> dict[str, Any]:
    """Renew ``lease_id`` at the leader (here or sent on); its answer map."""
    return await forwarder_for(node).call(
        lambda: node.lease_keepalive(lease_id), LeaseKeepAliveRequest(id=lease_id),
        changes=False, token=caller.token)


class LeaseService(EtcdService):
    """The handlers of etcd's Lease service for one node."""

    def register(self, server: Any) -> None:
        etcd_proto().rpc_pb2_grpc.add_LeaseServicer_to_server(self, server)

    @unary(WRITE)
    async def LeaseGrant(self, request: Any, context: Any) -> Any:  # noqa: N802 (etcd's name)
        node = self.node
        caller = caller_of(node, context)
        if request.TTL > MAX_LEASE_TTL:
            raise ee.EtcdError(ee.LEASE_TTL_TOO_LARGE)
        if request.ID < 0:
            raise InvalidArgument("a lease id is at least 1")
        ttl = max(request.TTL, math.ceil(node.leases.min_ttl), 1)
        # 63 bits, never 0 (0 asks for an id): etcd's ids are positive int64s.
        lease_id = request.ID or secrets.randbits(63) or 1
        try:
            result = await submit_write(node, caller, LeaseGrant(id=lease_id, ttl=ttl))
        except InvalidArgument as e:
            if e.message.startswith("lease ") and e.message.endswith("already exists"):
                raise ee.EtcdError(ee.LEASE_EXIST) from None
            raise
        return etcd_proto().rpc_pb2.LeaseGrantResponse(
            header=response_header(node, result), ID=lease_id, TTL=ttl)

    @unary(WRITE)
    async def LeaseRevoke(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        caller = caller_of(node, context)
        result = await submit_write(node, caller, LeaseRevoke(id=_lease_id(request.ID)))
        return etcd_proto().rpc_pb2.LeaseRevokeResponse(header=response_header(node, result))

    @streaming
    async def LeaseKeepAlive(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        node = self.node
        caller = _signed_in(node, context)
        if requires_leader(context) and not has_leader(node):
            raise ee.EtcdError(ee.NO_LEADER)
        pb = etcd_proto().rpc_pb2
        # One request at a time, each answered before the next is read: a client that
        # stops reading stops renewing, and nothing piles up here.
        async for request in request_iterator:
            lease_id = request.ID
            try:
                result = await keepalive(node, caller, _lease_id(lease_id))
                ttl = int(result["ttl"])
            except (LeaseNotFound, ee.EtcdError) as e:
                if isinstance(e, ee.EtcdError) and e.error is not ee.LEASE_NOT_FOUND:
                    raise
                result, ttl = {}, 0  # gone: etcd answers TTL 0, and the stream goes on
            await context.write(pb.LeaseKeepAliveResponse(
                header=response_header(node, result or None), ID=lease_id, TTL=ttl))

    @unary(None)
    async def LeaseTimeToLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        caller = _signed_in(node, context)
        pb = etcd_proto().rpc_pb2
        lease_id = request.ID
        try:
            result: dict[str, Any] = await forwarder_for(node).call(
                lambda: node.lease_ttl(_lease_id(lease_id), keys=request.keys),
                LeaseTimeToLiveRequest(id=_lease_id(lease_id), keys=request.keys),
                changes=False, token=caller.token)
        except (LeaseNotFound, ee.EtcdError) as e:
            if isinstance(e, ee.EtcdError) and e.error is not ee.LEASE_NOT_FOUND:
                raise
            return pb.LeaseTimeToLiveResponse(header=response_header(node), ID=lease_id,
                                              TTL=GONE_TTL)
        # etcd truncates the remaining seconds, as here.
        return pb.LeaseTimeToLiveResponse(
            header=response_header(node, result), ID=lease_id,
            TTL=int(result["remaining"]), grantedTTL=int(result["ttl"]),
            keys=list(result.get("keys") or ()))

    @unary(None)
    async def LeaseLeases(self, request: Any, context: Any) -> Any:  # noqa: N802
        node = self.node
        _signed_in(node, context)
        result = await node.lease_list()
        pb = etcd_proto().rpc_pb2
        return pb.LeaseLeasesResponse(
            header=response_header(node, result),
            leases=[pb.LeaseStatus(ID=lease["id"]) for lease in result["leases"]])
