"""The simulator can fail: known bugs injected into the core are caught within a few seeds.

A checker that never fails proves nothing. Each test switches on one
deliberate bug (``InjectedBug``) and asserts the simulator reports a
violation of the property the bug breaks, within a bounded number of seeds.
The bug that needs Figure 3.7's precise interleaving (committing an old-term
entry by counting) is proven by a scripted scenario in
``tests/unit/raft/`` instead, where the same safety monitor flags it; so is
a read lease that outlives the followers' election timeout
(``test_read_lease.py``), whose stale read needs a leader that stalls while
the others elect and commit.
"""

from __future__ import annotations

import pytest

from quorumkv.raft.config import InjectedBug
from quorumkv.sim import SimOptions, run_simulation
from quorumkv.sim.options import sub_rng


def _first_violation(bug: InjectedBug, nodes: int, max_seeds: int,
                     hunting: bool = False) -> tuple[int, str] | None:
    for seed in range(max_seeds):
        if hunting:
            options = SimOptions.bug_hunt(seed, nodes, frozenset({bug}))
        else:
            options = SimOptions.from_seed(seed, nodes, frozenset({bug}))
        result = run_simulation(options)
        if not result.ok:
            assert result.violation is not None
            return seed, result.violation
    return None


@pytest.mark.parametrize("nodes", [3, 5])
def test_granting_two_votes_in_a_term_breaks_election_safety(nodes: int) -> None:
    found = _first_violation(InjectedBug.VOTE_TWICE_IN_A_TERM, nodes, 20)
    assert found is not None
    assert "election safety" in found[1]


@pytest.mark.parametrize("nodes", [3, 5])
def test_skipping_the_up_to_date_check_breaks_leader_completeness(nodes: int) -> None:
    found = _first_violation(InjectedBug.SKIP_LOG_UP_TO_DATE_CHECK, nodes, 30)
    assert found is not None
    assert any(p in found[1] for p in (
        "leader completeness", "state machine safety", "log matching", "linearizable"))


@pytest.mark.parametrize("nodes", [3, 5])
def test_reading_without_confirming_leadership_is_not_linearizable(nodes: int) -> None:
    found = _first_violation(InjectedBug.READ_WITHOUT_QUORUM_CHECK, nodes, 40, hunting=True)
    assert found is not None
    assert "linearizable" in found[1]


def test_forgetting_the_vote_on_restart_breaks_election_safety() -> None:
    found = _first_violation(InjectedBug.FORGET_VOTE_ON_RESTART, 3, 150, hunting=True)
    assert found is not None
    assert "election safety" in found[1]


def test_the_correct_core_passes_the_same_seeds() -> None:
    """The hunting profile itself is not what fails: without the bug it is clean."""
    for seed in range(30):
        result = run_simulation(SimOptions.bug_hunt(seed, 3, frozenset()))
        assert result.ok, f"seed {seed}: {result.violation}"
    assert sub_rng(1, "x").random() == sub_rng(1, "x").random()

