"""A node's process collects cycles far less often than CPython's default (gc_tuning.py)."""

from __future__ import annotations

import gc

from quorumkv.server.gc_tuning import NODE_THRESHOLDS, tune_for_node


def test_a_node_raises_the_collector_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_for_node()
        assert gc.get_threshold() == NODE_THRESHOLDS
        young, middle, full = NODE_THRESHOLDS
        # Rarer than the defaults at every generation, and still on (0 would disable it).
        assert young > 700 and middle >= 10 and full >= 10
    finally:
        gc.set_threshold(*before)
