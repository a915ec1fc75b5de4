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

The wire protocol both clients speak is documented in :mod:`quorumkv.client.protocol`.
"""

from quorumkv.client.async_client import AsyncClient
from quorumkv.client.client import Client
from quorumkv.client.members import DEFAULT_TOKEN, Member, Membership
from quorumkv.client.protocol import Header
from quorumkv.client.raw import RawClient
from quorumkv.kv.commands import Compare, CompareOp, CompareTarget, DeleteRange, Put, RangeRequest
from quorumkv.kv.keys import ALL_KEYS, prefix_end
from quorumkv.kv.results import (
    CompactResult,
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    TxnResponse,
    TxnResult,
)

__all__ = [
    "ALL_KEYS",
    "DEFAULT_TOKEN",
    "AsyncClient",
    "Client",
    "CompactResult",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "DeleteRange",
    "DeleteResult",
    "Header",
    "KeyValue",
    "Member",
    "Membership",
    "Put",
    "PutResult",
    "RangeRequest",
    "RangeResult",
    "RawClient",
    "TxnResponse",
    "TxnResult",
    "prefix_end",
]
