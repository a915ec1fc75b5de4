"""Clients of a quorumkv cluster: :class:`AsyncClient` (asyncio) and :class:`Client` (blocking).

Both have the same methods: ``put``, ``get``, ``range``, ``scan_prefix``,
``delete``, ``txn``, ``compare_and_swap``, ``compact``, ``status``, ``digest``,
the membership methods (``membership``, ``member_list``, ``member_add``,
``member_remove``, ``member_promote``, ``leave``; they return :class:`Member`)
and ``close``. Transactions are built from the kv types exported here::

    from quorumkv.client import Client, Compare, CompareOp, CompareTarget, Put

    with Client(["127.0.0.1:2379"]) as kv:
        kv.txn([Compare(key=b"k", target=CompareTarget.VERSION, op=CompareOp.EQUAL, value=0)],
               [Put(key=b"k", value=b"first")])

Coordination: ``watch`` (an iterator of :class:`WatchResponse` batches of
:class:`Event`), leases (``grant_lease``, ``revoke_lease``, ``lease_keepalive``,
``lease_ttl``, ``leases``), and the recipes built on them, :class:`Lock` and
:class:`Election` (blocking: :class:`BlockingLock`, :class:`BlockingElection`)::

    with Client(["127.0.0.1:2379"]) as kv, BlockingLock(kv, "reports") as token:
        ...  # hand ``token`` to whatever the lock protects

The wire protocol both clients speak is documented in :mod:`quorumkv.client.protocol`.
Nodes whose client ports speak TLS take ``tls=TLSSettings(ca_file=...)`` (and a client
certificate, ``cert_file``/``key_file``, where they require one); see docs/security.md.
"""

from quorumkv.client.async_client import AsyncClient
from quorumkv.client.client import BlockingLease, BlockingWatch, Client
from quorumkv.client.coordination_wire import WatchResponse
from quorumkv.client.lease import Lease
from quorumkv.client.members import DEFAULT_TOKEN, Member, Membership
from quorumkv.client.protocol import Header
from quorumkv.client.raw import RawClient
from quorumkv.client.recipes import (
    BlockingElection,
    BlockingLeaderObserver,
    BlockingLock,
    Election,
    LeaderObserver,
    Lock,
)
from quorumkv.client.watch import Watch
from quorumkv.kv.commands import Compare, CompareOp, CompareTarget, DeleteRange, Put, RangeRequest
from quorumkv.kv.keys import ALL_KEYS, prefix_end
from quorumkv.kv.results import (
    CompactResult,
    DeleteResult,
    Event,
    EventType,
    KeyValue,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    TxnResponse,
    TxnResult,
)
from quorumkv.security.tls import TLSSettings

__all__ = [
    "ALL_KEYS",
    "DEFAULT_TOKEN",
    "AsyncClient",
    "BlockingElection",
    "BlockingLeaderObserver",
    "BlockingLease",
    "BlockingLock",
    "BlockingWatch",
    "Client",
    "CompactResult",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRange",
    "DeleteResult",
    "Election",
    "Event",
    "EventType",
    "Header",
    "KeyValue",
    "LeaderObserver",
    "Lease",
    "LeaseRevokeResult",
    "Lock",
    "Member",
    "Membership",
    "Put",
    "PutResult",
    "RangeRequest",
    "RangeResult",
    "RawClient",
    "TLSSettings",
    "TxnResponse",
    "TxnResult",
    "Watch",
    "WatchResponse",
    "prefix_end",
]
