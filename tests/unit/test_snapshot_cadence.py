"""When a node takes a snapshot: every ``snapshot_threshold`` entries while the store is
small; with a large store, only once the log has also grown by a share of its size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from quorumkv.server.raft_group import LARGE_SNAPSHOT_BYTES, SNAPSHOT_LOG_RATIO, snapshot_due

MB = 1 << 20


def test_a_small_store_snapshots_every_threshold_entries() -> None:
    assert not snapshot_due(entries=9_999, threshold=10_000, log_bytes=0, snapshot_bytes=MB)
    assert snapshot_due(entries=10_000, threshold=10_000, log_bytes=0, snapshot_bytes=MB)
    assert snapshot_due(entries=10_000, threshold=10_000, log_bytes=0, snapshot_bytes=0)


def test_a_large_store_waits_for_the_log_to_grow_by_a_share_of_it() -> None:
    big = 400 * MB
    share = int(big * SNAPSHOT_LOG_RATIO)
    assert not snapshot_due(entries=50_000, threshold=10_000, log_bytes=share - 1,
                            snapshot_bytes=big)
    assert snapshot_due(entries=50_000, threshold=10_000, log_bytes=share, snapshot_bytes=big)
    # The entry threshold still holds however much was logged.
    assert not snapshot_due(entries=9_999, threshold=10_000, log_bytes=10 * big,
                            snapshot_bytes=big)


@given(entries=st.integers(0, 10**6), threshold=st.integers(1, 10**5),
       log_bytes=st.integers(0, 1 << 34), snapshot_bytes=st.integers(0, 1 << 34))
def test_copying_costs_at_most_a_fixed_multiple_of_what_was_logged(
        entries: int, threshold: int, log_bytes: int, snapshot_bytes: int) -> None:
    if snapshot_due(entries=entries, threshold=threshold, log_bytes=log_bytes,
                    snapshot_bytes=snapshot_bytes):
        assert entries >= threshold
        # The copy (about the last snapshot's size) is paid for by the log, or small.
        assert (snapshot_bytes < LARGE_SNAPSHOT_BYTES
                or snapshot_bytes <= log_bytes / SNAPSHOT_LOG_RATIO)
