"""The LMDB environment under a store: how it is opened, checked, flushed, and its errors.

A state machine directory is an LMDB environment (``data.mdb``, ``lock.mdb``)
with three named sub-databases, ``kv`` (see ``history.py``), ``meta`` (see
``records.py``) and ``sessions`` (see ``sessions.py``; format 1 stores lack
it and are upgraded when opened). Anything else in it is refused with
DataDirError rather than guessed at.

Reads get the store's revisions from the ``meta`` records through a
:class:`StateReader`, which decodes them only when their bytes changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import lmdb

from quorumkv.errors import DataDirError, StorageError
from quorumkv.kv.history import Txn
from quorumkv.kv.records import (
    CONF_KEY,
    FORMAT,
    FORMAT_KEY,
    FORMAT_WITHOUT_SESSIONS,
    STATE_KEY,
    StoreState,
    decode_format,
    decode_state,
    encode_conf,
    encode_format,
    encode_state,
)

KV_DB = b"kv"
META_DB = b"meta"
SESSIONS_DB = b"sessions"
DATA_FILE = "data.mdb"
MAX_DBS = 3


class lmdb_errors:  # noqa: N801 - used as a function, like contextlib's
    """Translate LMDB's and the file system's errors into ours at the boundary.

    A class rather than a @contextmanager generator: every read enters one,
    and a generator costs about a microsecond more.
    """

    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, lmdb.MapFullError):
            raise StorageError(f"{self._what}: the state machine is full; open it with a "
                               f"larger map_size") from exc
        if isinstance(exc, (lmdb.Error, OSError)):
            raise StorageError(f"{self._what}: {exc}") from exc


# Why these flags. The Raft log, fsynced before an entry is acknowledged, is
# the durability boundary: after a crash the server replays committed
# entries from applied_index + 1. So an apply need not be durable when it
# returns (losing the last applies only means replaying them), but LMDB must
# never be *corrupted* by a crash, and its applied index must not run ahead
# of its data (it cannot: they commit in one transaction).
#
# - sync=False (MDB_NOSYNC) skips the flush at commit. A killed process
#   loses nothing, since the pages are in the OS cache, but after a power
#   cut the kernel may have written the meta page before the pages it points
#   to: LMDB documents that this can corrupt the file unless the file system
#   keeps write order. Not safe.
# - writemap=True and map_async=True let the kernel flush the map's dirty
#   pages in any order: the same risk, and stray writes reach the file.
# - metasync=False (MDB_NOMETASYNC) flushes the data pages at commit and
#   leaves the meta page to the next commit's flush. A crash can undo the
#   last transaction and cannot corrupt: exactly "may lose a suffix, replay
#   it", for one fdatasync per commit instead of two.
#
# Hence sync=True, metasync=False, writemap=False, map_async=False.
# ``apply_batch`` spreads the one fdatasync over every entry of a batch, and
# ``snapshot_to`` forces a full flush first, so the store on disk never
# falls behind a snapshot taken from it (after which the log may be cut).
# A temporary store (simulations, tests) is deleted on close and never
# outlives a crash, so it opens with sync=False.
def open_environment(path: Path, *, map_size: int, durable: bool,
                     create: bool) -> lmdb.Environment:
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataDirError(f"cannot create the state machine in {path}: {err}") from err
    elif not (path / DATA_FILE).is_file():
        raise DataDirError(f"no state machine in {path}")
    try:
        return lmdb.open(str(path), map_size=map_size, subdir=True, create=create,
                         max_dbs=MAX_DBS, sync=durable, metasync=False, writemap=False,
                         map_async=False)
    except lmdb.Error as err:
        raise DataDirError(f"cannot open the state machine in {path}: {err}") from err


def flush_copy(path: Path) -> None:
    """Make the LMDB data file copied into directory ``path`` durable.

    This package does no file I/O of its own (it imports no ``os``), so it
    asks LMDB: opening the copy and forcing a sync fdatasyncs its data file.
    """
    with lmdb_errors(f"flushing {path}"):
        env = lmdb.open(str(path), subdir=True, create=False, max_dbs=MAX_DBS, lock=False)
        try:
            env.sync(True)
        finally:
            env.close()


@dataclass(frozen=True, slots=True)
class Attached:
    kv_db: lmdb._Database
    meta_db: lmdb._Database
    sessions_db: lmdb._Database
    state: StoreState


_FORMAT_NAMES = {
    FORMAT_WITHOUT_SESSIONS: {KV_DB, META_DB},
    FORMAT: {KV_DB, META_DB, SESSIONS_DB},
}


def _check_names(txn: Txn, path: Path) -> bool:
    """Whether the environment is new; DataDirError if it is someone else's."""
    names = {name for name, _ in txn.cursor()}
    if names and names not in _FORMAT_NAMES.values():
        raise DataDirError(f"{path} holds an LMDB store that is not a quorumkv state machine")
    return not names


def _read_format(txn: Txn, meta_db: lmdb._Database, path: Path) -> int:
    """The store's format: :data:`FORMAT`, or an older one this version upgrades."""
    return _format_of(txn.get(FORMAT_KEY, db=meta_db), path)


def _format_of(fmt: bytes | None, path: Path) -> int:
    if fmt is None:
        raise DataDirError(f"{path} is not a quorumkv state machine")
    number = decode_format(fmt)
    if number not in _FORMAT_NAMES:
        raise DataDirError(f"{path} has state machine format {number}; this version reads "
                           f"formats {FORMAT_WITHOUT_SESSIONS} to {FORMAT}")
    return number


def _check_format(txn: Txn, meta_db: lmdb._Database, path: Path) -> int:
    """The store's format, once its sub-databases are found to be that format's."""
    fmt = _read_format(txn, meta_db, path)
    if {name for name, _ in txn.cursor()} != _FORMAT_NAMES[fmt]:
        raise DataDirError(f"{path} is not a quorumkv state machine of format {fmt}")
    return fmt


def read_state(txn: Txn, meta_db: lmdb._Database, path: Path) -> StoreState:
    return _state_of(txn.get(FORMAT_KEY, db=meta_db), txn.get(STATE_KEY, db=meta_db),
                     txn.get(CONF_KEY, db=meta_db), path)


def _state_of(fmt: bytes | None, state: bytes | None, conf: bytes | None,
              path: Path) -> StoreState:
    number = _format_of(fmt, path)
    if state is None or conf is None:
        raise DataDirError(f"{path} is not a quorumkv state machine")
    return decode_state(state, conf, fmt=number)


class StateReader:
    """:func:`read_state` for a store's readers, decoding only records that changed.

    Every read needs the store's revisions, and decoding the three records
    costs more than a one-key read itself; between two applies they are the
    same bytes. So the last records read are kept with their decoded state,
    and a read whose records are byte for byte those is answered with it: it
    was checked when decoded, and a record that changed, damaged or not, is
    decoded and checked again.

    Reads run on many threads. The cache is one tuple, replaced whole by a
    single assignment, so a reader sees a consistent entry without a lock
    (this package imports no threading); racing readers at worst decode twice.
    """

    __slots__ = ("_last", "_meta_db", "_path")

    def __init__(self, meta_db: lmdb._Database, path: Path) -> None:
        self._meta_db = meta_db
        self._path = path
        self._last: tuple[bytes, bytes, bytes, StoreState] | None = None

    def read(self, txn: Txn) -> StoreState:
        """The state in ``txn``'s snapshot (as :func:`read_state`)."""
        meta_db = self._meta_db
        fmt = txn.get(FORMAT_KEY, db=meta_db)
        state = txn.get(STATE_KEY, db=meta_db)
        conf = txn.get(CONF_KEY, db=meta_db)
        last = self._last
        if last is not None and last[1] == state and last[2] == conf and last[0] == fmt:
            return last[3]
        decoded = _state_of(fmt, state, conf, self._path)
        assert fmt is not None and state is not None and conf is not None
        self._last = (fmt, state, conf, decoded)
        return decoded


def attach(env: lmdb.Environment, path: Path) -> Attached:
    """Open the sub-databases, initialising a new environment and upgrading a format 1
    one; refuse foreign ones."""
    with lmdb_errors(f"opening {path}"), env.begin(write=True) as txn:
        new = _check_names(txn, path)
        try:
            kv_db = env.open_db(KV_DB, txn=txn)
            meta_db = env.open_db(META_DB, txn=txn)
            if new:
                fmt, state = FORMAT, StoreState()
            else:
                fmt, state = _check_format(txn, meta_db, path), read_state(txn, meta_db, path)
            sessions_db = env.open_db(SESSIONS_DB, txn=txn)
        except lmdb.IncompatibleError as err:
            raise DataDirError(f"{path} is not a quorumkv state machine") from err
        if new or fmt != FORMAT:
            # A format 1 store just got its (empty) session table; these
            # records, in the same transaction, make it format 2.
            txn.put(FORMAT_KEY, encode_format(), db=meta_db)
            txn.put(STATE_KEY, encode_state(state), db=meta_db)
            txn.put(CONF_KEY, encode_conf(state.conf_state), db=meta_db)
        return Attached(kv_db, meta_db, sessions_db, state)


def copy_checked(source: Path, dest: Path) -> StoreState:
    """Copy the state machine in ``source`` into empty directory ``dest``; return its state.

    The source is opened read-only and without a lock file, so a snapshot
    directory is left as it was; it must be a state machine of our format.
    """
    if not (source / DATA_FILE).is_file():
        raise DataDirError(f"no state machine in {source}")
    try:
        env = lmdb.open(str(source), subdir=True, create=False, readonly=True, lock=False,
                        max_dbs=MAX_DBS)
    except lmdb.Error as err:
        raise DataDirError(f"cannot open the state machine in {source}: {err}") from err
    try:
        with lmdb_errors(f"copying {source}"), env.begin() as txn:
            if _check_names(txn, source):
                raise DataDirError(f"{source} is not a quorumkv state machine")
            try:
                meta_db = env.open_db(META_DB, txn=txn, create=False)
            except lmdb.Error as err:
                raise DataDirError(f"{source} is not a quorumkv state machine") from err
            _check_format(txn, meta_db, source)
            state = read_state(txn, meta_db, source)
            env.copy(str(dest), compact=True, txn=txn)
            return state
    finally:
        env.close()
