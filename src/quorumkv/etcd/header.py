"""The ResponseHeader every etcd answer carries, filled from the node that answers.

etcd's clients read it on every answer (etcdctl crashes on an empty one):
``cluster_id``, ``member_id`` (this member's Raft id), ``revision`` (the
store's revision the answer reflects) and ``raft_term``. quorumkv's
revisions are etcd's MVCC revisions, so they map one to one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from quorumkv.etcd.generated import etcd_proto

if TYPE_CHECKING:
    from quorumkv.server.node import Node


def response_header(node: Node, answer: Mapping[str, Any] | None = None) -> Any:
    """This member's header; with ``answer`` (a result map of ``node.write`` or
    ``node.range``, possibly the leader's, sent on), its revision and term.

    The member is always this one, even for a write the leader applied: etcd's
    followers answer for the writes they pass on too.
    """
    local = node.header()
    revision, term = local["revision"], local["raft_term"]
    if answer is not None:
        remote = answer.get("header") or {}
        # A write's own revision; a read's, the store's when it was served.
        revision = answer.get("revision", remote.get("revision", revision))
        term = max(term, remote.get("raft_term", term))
    return etcd_proto().rpc_pb2.ResponseHeader(
        cluster_id=node.cluster_id, member_id=node.node_id, revision=revision,
        raft_term=term)
