"""A short chaos run per cluster size, in every `make test`: faults, then a verdict.

Longer runs: ``make chaos DURATION=600 SEED=...`` (runner.py). The seed fixes
the fault schedule; set QUORUMKV_CHAOS_SEED to try another here.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from runner import run

pytestmark = pytest.mark.timeout(600)

SEED = int(os.environ.get("QUORUMKV_CHAOS_SEED", "20261128"))


@pytest.mark.parametrize("nodes", [3, 5])
def test_a_short_chaos_run_is_linearizable_and_converges(nodes: int) -> None:
    verdict = asyncio.run(run(nodes=nodes, duration=25.0, seed=SEED + nodes, clients=10))
    print(verdict.summary())
    assert verdict.ok, verdict.summary()
    # The run did something: operations completed, and faults were injected.
    assert verdict.ops.get("put-ok", 0) + verdict.ops.get("cas-ok", 0) > 100
    assert sum(verdict.faults.values()) >= 4
