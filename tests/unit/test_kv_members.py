"""The member registry kept by the state machine (kv/members.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quorumkv.errors import StorageError
from quorumkv.kv import KVStore
from quorumkv.kv.members import MemberRecord, MembershipChange, decode_member, encode_member
from quorumkv.raft.entries import ConfChange, ConfChangeType, ConfState, Entry, EntryType
from quorumkv.server.state_machine_io import payloads

N1 = MemberRecord(name="n1", peer_address="127.0.0.1:7001", client_address="127.0.0.1:7101")
N4 = MemberRecord(name="n4", peer_address="127.0.0.1:7004", auto_promote=True)


def _conf(voters: set[int], learners: set[int] | None = None) -> ConfState:
    return ConfState(voters=frozenset(voters), learners=frozenset(learners or ()))


def test_records_round_trip_and_the_first_textual_contexts_still_decode() -> None:
    for rec in (N1, N4):
        assert decode_member(encode_member(rec)) == rec
    assert decode_member(b"n2=127.0.0.1:7002") == MemberRecord(
        name="n2", peer_address="127.0.0.1:7002")
    for bad in (b"", b"nonsense", b"\x95\x01\x02\x03\x04\x05", b"\x95\xc1"):
        with pytest.raises(StorageError):
            decode_member(bad)


def test_registry_follows_membership_changes_and_travels_in_snapshots(tmp_path: Path) -> None:
    store = KVStore.open(tmp_path / "a")
    store.apply_batch([
        (1, 1, MembershipChange(conf=_conf({1}), node_id=1, member=N1)),
        (2, 1, MembershipChange(conf=_conf({1}, {4}), node_id=4, member=N4)),
    ])
    assert store.members() == {1: N1, 4: N4}
    assert store.conf_state == _conf({1}, {4})
    before = store.digest()
    # A promotion without a record keeps the one already there.
    store.apply_batch([(3, 1, MembershipChange(conf=_conf({1, 4}), node_id=4, member=None))])
    assert store.members() == {1: N1, 4: N4}
    assert store.digest() != before  # the membership is part of the state
    store.snapshot_to(tmp_path / "snap")
    copy = KVStore.open(tmp_path / "b")
    copy.restore_from(tmp_path / "snap")
    assert copy.members() == {1: N1, 4: N4}
    assert copy.digest() == store.digest()
    store.apply_batch([(4, 1, MembershipChange(conf=_conf({1}), node_id=4, member=None,
                                               removed=True))])
    assert store.members() == {1: N1}
    store.close()
    copy.close()
    reopened = KVStore.open(tmp_path / "a")
    assert reopened.members() == {1: N1}
    reopened.close()


def test_payloads_carry_the_record_of_each_change() -> None:
    add = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=4, context=encode_member(N4))
    promote = ConfChange(type=ConfChangeType.ADD_VOTER, node_id=4)
    remove = ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=4, context=b"ignored")
    garbled = ConfChange(type=ConfChangeType.ADD_LEARNER, node_id=5, context=b"\x95\xc1")
    entries = [Entry(index=i + 1, term=1, type=EntryType.CONF_CHANGE, data=cc.encode())
               for i, cc in enumerate((add, promote, remove, garbled))]
    batch = payloads(entries, _conf({1}))
    changes = [p for _, _, p in batch]
    assert all(isinstance(c, MembershipChange) for c in changes)
    assert changes == [
        MembershipChange(conf=_conf({1}, {4}), node_id=4, member=N4),
        MembershipChange(conf=_conf({1, 4}), node_id=4, member=None),
        MembershipChange(conf=_conf({1}), node_id=4, member=None, removed=True),
        MembershipChange(conf=_conf({1}, {5}), node_id=5, member=None),
    ]
