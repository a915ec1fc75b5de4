"""The LMDB key layout: order, prefix-freedom and size, for keys of every length."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quorumkv.kv.keys import (
    ESCAPED_LIMIT,
    LMDB_MAX_KEY,
    MAX_REVISION,
    MAX_SUB,
    PAST_SLOT,
    group,
    history_key,
    in_range,
    is_truncated,
    key_of_full_slot,
    slot,
    split_history_key,
)

# Bytes that matter to the escape (0x00, 0xFF) and ordinary ones, in keys
# around the truncation threshold as well as short ones.
_byte = st.sampled_from(b"\x00\x01\x7f\xfe\xff")
_around_limit = st.builds(
    lambda fill, n, tail: fill * n + tail,
    st.sampled_from([b"\x00", b"a", b"\xff"]),
    st.integers(ESCAPED_LIMIT // 2 - 4, ESCAPED_LIMIT + 4),
    st.lists(_byte, max_size=4).map(bytes),
)
keys = st.one_of(st.lists(_byte, min_size=1, max_size=6).map(bytes), _around_limit,
                 st.binary(min_size=1, max_size=4096))


@settings(max_examples=500)
@given(keys, keys)
def test_groups_sort_like_their_keys(a: bytes, b: bytes) -> None:
    low, high = sorted((a, b))
    assert group(slot(low)) <= group(slot(high))
    if not is_truncated(slot(low)) and not is_truncated(slot(high)):
        assert (slot(low) < slot(high)) == (low < high)


@settings(max_examples=500)
@given(keys, keys)
def test_slots_are_distinct_and_prefix_free(a: bytes, b: bytes) -> None:
    sa, sb = slot(a), slot(b)
    assert (sa == sb) == (a == b)
    if a != b:
        assert not sa.startswith(sb) and not sb.startswith(sa)
        assert not group(sa).startswith(group(sb)) or group(sa) == group(sb)


@settings(max_examples=300)
@given(keys, st.integers(0, MAX_REVISION), st.integers(0, MAX_SUB))
def test_history_keys_fit_lmdb_and_split_back(key: bytes, main: int, sub: int) -> None:
    s = slot(key)
    lmdb_key = history_key(s, main, sub)
    assert len(lmdb_key) <= LMDB_MAX_KEY
    assert len(s + PAST_SLOT) <= LMDB_MAX_KEY
    assert split_history_key(lmdb_key) == (s, main, sub)
    assert s.startswith(group(s))
    if not is_truncated(s):
        assert key_of_full_slot(s) == key


@given(keys, st.integers(0, MAX_REVISION - 1), st.integers(0, MAX_SUB))
def test_revisions_sort_within_a_slot(key: bytes, main: int, sub: int) -> None:
    s = slot(key)
    assert history_key(s, main, sub) < history_key(s, main + 1, 0) < s + PAST_SLOT


def test_truncation_threshold() -> None:
    assert not is_truncated(slot(b"a" * ESCAPED_LIMIT))
    assert is_truncated(slot(b"a" * (ESCAPED_LIMIT + 1)))
    # Escaping counts: half as many zero bytes reach the limit.
    assert not is_truncated(slot(b"\x00" * (ESCAPED_LIMIT // 2)))
    assert is_truncated(slot(b"\x00" * (ESCAPED_LIMIT // 2 + 1)))


def test_in_range_follows_etcd() -> None:
    assert in_range(b"a", b"a", None)
    assert not in_range(b"ab", b"a", None)
    assert in_range(b"zz", b"a", b"\x00")
    assert not in_range(b"0", b"a", b"\x00")
    assert in_range(b"a", b"a", b"b") and not in_range(b"b", b"a", b"b")
