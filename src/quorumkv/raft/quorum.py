"""Majority arithmetic over a set of voters (thesis §3.6: commit by majority)."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def quorum_size(voters: int) -> int:
    return voters // 2 + 1


def committed_index(voters: Collection[int], match: Mapping[int, int]) -> int:
    """The highest index that a majority of ``voters`` have in their logs."""
    if not voters:
        return 0
    matched = sorted((match.get(v, 0) for v in voters), reverse=True)
    return matched[quorum_size(len(matched)) - 1]


def vote_result(voters: Collection[int], votes: Mapping[int, bool]) -> bool | None:
    """True once a majority granted, False once a majority is out of reach, else None."""
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = quorum_size(len(voters))
    if granted >= need:
        return True
    if len(voters) - rejected < need:
        return False
    return None


def has_quorum(voters: Collection[int], members: Collection[int]) -> bool:
    present = sum(1 for v in voters if v in members)
    return present >= quorum_size(len(voters))
