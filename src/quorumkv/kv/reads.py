"""Answering a RangeRequest from a transaction: the one read path, in and out of the log."""

from __future__ import annotations

from dataclasses import replace

from quorumkv.errors import Compacted, InvalidArgument
from quorumkv.kv.commands import RangeRequest
from quorumkv.kv.history import History, Txn
from quorumkv.kv.results import KeyValue, RangeResult


def check_read_revision(revision: int, *, current: int, compact_revision: int) -> None:
    """Whether history at ``revision`` (0: current) can be read; raises if not."""
    if revision > current:
        raise InvalidArgument(f"future revision {revision} (current revision {current})")
    if revision and revision < compact_revision:
        raise Compacted(compact_revision=compact_revision)


def read_range(history: History, txn: Txn, req: RangeRequest, *, current: int) -> RangeResult:
    """Answer ``req`` (already checked) as the store stands at ``current``.

    ``count`` counts every key in range, so the scan goes to the end even when
    ``limit`` is reached. The answer's ``revision`` is ``current``, the
    store's revision when it was served, also for reads of the past (as in
    etcd): it tells a client how far the replica it asked had got.
    """
    if req.range_end is None:
        # One key, the commonest read: no scan generator to run.
        kv = history.get(txn, req.key, req.revision or current)
        if kv is None:
            return RangeResult(kvs=(), count=0, more=False, revision=current)
        if req.count_only:
            return RangeResult(kvs=(), count=1, more=False, revision=current)
        return RangeResult(kvs=(replace(kv, value=b"") if req.keys_only else kv,), count=1,
                           more=False, revision=current)
    kvs: list[KeyValue] = []
    count = 0
    for kv in history.scan(txn, req.key, req.range_end, req.revision or current):
        count += 1
        if req.count_only or (req.limit and len(kvs) >= req.limit):
            continue
        kvs.append(replace(kv, value=b"") if req.keys_only else kv)
    more = not req.count_only and req.limit > 0 and count > req.limit
    return RangeResult(kvs=tuple(kvs), count=count, more=more, revision=current)
