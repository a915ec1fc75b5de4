"""RawClient: the key-value surface TiKV's raw API users know, over a blocking Client.

``put/get/delete/batch_put/batch_get/batch_delete/scan/delete_range/
compare_and_swap``, with plain bytes in and out. Batches are one atomic
transaction (one log entry, one revision), so they are all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from quorumkv.client.client import Client
from quorumkv.kv.commands import DeleteRange, Put, RangeRequest
from quorumkv.kv.results import RangeResult, TxnResult


class RawClient:
    def __init__(self, endpoints: Sequence[str], **options: Any) -> None:
        self._client = Client(endpoints, **options)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, key: bytes, value: bytes) -> None:
        self._client.put(key, value)

    def get(self, key: bytes) -> bytes | None:
        kv = self._client.get(key)
        return None if kv is None else kv.value

    def delete(self, key: bytes) -> None:
        self._client.delete(key)

    def batch_put(self, pairs: Mapping[bytes, bytes] | Iterable[tuple[bytes, bytes]]) -> None:
        items = pairs.items() if isinstance(pairs, Mapping) else pairs
        ops = [Put(key=k, value=v) for k, v in items]
        if ops:
            self._client.txn([], ops)

    def batch_get(self, keys: Iterable[bytes]) -> dict[bytes, bytes]:
        """The keys that exist, read together at one revision."""
        wanted = list(keys)
        if not wanted:
            return {}
        result = self._client.txn([], [RangeRequest(key=k) for k in wanted])
        assert isinstance(result, TxnResult)
        found: dict[bytes, bytes] = {}
        for response in result.responses:
            if isinstance(response, RangeResult):
                for kv in response.kvs:
                    found[kv.key] = kv.value
        return found

    def batch_delete(self, keys: Iterable[bytes]) -> None:
        ops = [DeleteRange(key=k) for k in keys]
        if ops:
            self._client.txn([], ops)

    def scan(self, start: bytes, end: bytes | None = None, *, limit: int = 0,
             keys_only: bool = False) -> list[tuple[bytes, bytes]]:
        """Pairs with ``start <= key < end`` in key order (``end`` None: to the last key)."""
        result = self._client.range(start, end if end is not None else b"\0", limit=limit,
                                    keys_only=keys_only)
        return [(kv.key, kv.value) for kv in result.kvs]

    def delete_range(self, start: bytes, end: bytes | None = None) -> int:
        return self._client.delete(start, range_end=end if end is not None else b"\0").deleted

    def compare_and_swap(self, key: bytes, expected: bytes | None, value: bytes) -> bool:
        """Set ``key`` to ``value`` iff it currently holds ``expected`` (None: is absent)."""
        return self._client.compare_and_swap(key, expected, value)
