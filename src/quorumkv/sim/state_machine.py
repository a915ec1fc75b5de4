"""The simulator's state machine: the real MVCC store on LMDB, behind the driver's interface.

Each simulated node owns a temporary LMDB store. A crash throws it away, as a
real node's state machine is rebuilt from its snapshot and log; snapshots
travel as the bytes of LMDB's compacted copy, exactly what the server will
stream to a follower.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from quorumkv.errors import RequestError
from quorumkv.kv import (
    Applied,
    Compare,
    CompareOp,
    CompareTarget,
    KVStore,
    Put,
    PutResult,
    Txn,
    TxnResult,
    encode_command,
)
from quorumkv.raft.entries import Entry
from quorumkv.server.state_machine_io import payloads

DATA_FILE = "data.mdb"


def put_command(key: str, value: bytes) -> Put:
    return Put(key=key.encode(), value=value)


def cas_command(key: str, expected: bytes | None, value: bytes) -> Txn:
    """Swap iff the current value is ``expected`` (``None``: the key must not exist)."""
    if expected is None:
        # A missing key has create revision 0, as in etcd.
        cond = Compare(key=key.encode(), target=CompareTarget.CREATE_REVISION,
                       op=CompareOp.EQUAL, value=0)
    else:
        cond = Compare(key=key.encode(), target=CompareTarget.VALUE, op=CompareOp.EQUAL,
                       value=expected)
    return Txn(compares=(cond,), success=(Put(key=key.encode(), value=value),))


class SimStateMachine:
    def __init__(self) -> None:
        self.store = KVStore.open_temporary()

    @property
    def applied_index(self) -> int:
        return self.store.applied_index

    def apply(self, entries: Sequence[Entry]) -> list[bool | None]:
        """Apply committed entries in one LMDB transaction; each cas's outcome, or None."""
        batch = payloads(entries, self.store.conf_state)
        results: list[bool | None] = []
        for outcome in self.store.apply_batch(batch):
            if isinstance(outcome, RequestError):
                results.append(None)
                continue
            assert isinstance(outcome, Applied), outcome
            result = outcome.result
            assert result is None or isinstance(result, PutResult | TxnResult)
            results.append(result.succeeded if isinstance(result, TxnResult) else None)
        return results

    def get(self, key: str) -> bytes | None:
        kv = self.store.get(key.encode())
        return None if kv is None else kv.value

    def snapshot(self) -> bytes:
        with tempfile.TemporaryDirectory(prefix="quorumkv-sim-snap-") as tmp:
            self.store.snapshot_to(tmp)
            return (Path(tmp) / DATA_FILE).read_bytes()

    def restore(self, image: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="quorumkv-sim-restore-") as tmp:
            (Path(tmp) / DATA_FILE).write_bytes(image)
            self.store.restore_from(tmp)

    def digest(self) -> str:
        return self.store.digest()

    def close(self) -> None:
        self.store.close()


def encode(cmd: Put | Txn, timestamp: int) -> bytes:
    """Stamp a command with the leader's clock at proposal, then encode it for the log."""
    if isinstance(cmd, Put):
        cmd = Put(key=cmd.key, value=cmd.value, timestamp=timestamp)
    else:
        cmd = Txn(compares=cmd.compares, success=cmd.success, failure=cmd.failure,
                  timestamp=timestamp)
    return encode_command(cmd)
