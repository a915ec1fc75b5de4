"""KVStore: the replicated state machine, an MVCC key-value store on LMDB.

The server hands it every committed log entry, in index order: commands
through :meth:`KVStore.apply` (or many at once through
:meth:`KVStore.apply_batch`), membership changes through
:meth:`KVStore.apply_conf_state`, and entries with nothing to apply (the
leader's no-op) through :meth:`KVStore.apply_noop`. Each call is one LMDB
write transaction that also records the entry's index and term, so the data
and the applied index never disagree on disk; an entry at or below the
applied index is skipped, which makes replay after a restart safe.

A command that fails (compacting the past, reading a compacted revision in
a Txn) fails the same way on every replica: its entry still counts as
applied, and the error is the entry's result.

A client's numbered write comes as a Session and is applied at most once:
the session table (``sessions.py``), updated in the same transaction, keeps
the outcomes of each client's recent writes, and a repeat gets the recorded
outcome back with nothing applied (thesis §6.3).

The store may be read from other threads while one thread applies: every
read runs in its own LMDB snapshot. Closing or restoring it while others
use it is not safe. Its files and flags are described in ``environment.py``,
its key layout in ``keys.py``.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

import lmdb

from quorumkv.errors import DataDirError, PermissionDenied, RequestError, StorageError
from quorumkv.kv.applier import Applier
from quorumkv.kv.auth import AuthTable, AuthView, needs_of
from quorumkv.kv.commands import (
    AuthChange,
    Authorized,
    Command,
    LeaseRevoke,
    RangeRequest,
    Session,
    Write,
)
from quorumkv.kv.environment import (
    DATA_FILE,
    StateReader,
    attach,
    copy_checked,
    flush_copy,
    lmdb_errors,
    open_environment,
)
from quorumkv.kv.history import SCAN_ALL_START, History, Txn
from quorumkv.kv.keys import ALL_KEYS
from quorumkv.kv.leases import LeaseIndex
from quorumkv.kv.members import (
    MEMBER_PREFIX,
    MemberRecord,
    MembershipChange,
    decode_member,
    encode_member,
    member_key,
    node_id_of_key,
)
from quorumkv.kv.packing import pack
from quorumkv.kv.reads import check_read_revision, read_range
from quorumkv.kv.records import (
    CONF_KEY,
    FORMAT,
    STATE_KEY,
    StoreState,
    encode_conf,
    encode_kv,
    encode_state,
)
from quorumkv.kv.results import (
    AlreadyApplied,
    Applied,
    AuthResult,
    Event,
    KeyValue,
    RangeResult,
)
from quorumkv.kv.sessions import SessionBatch, SessionPolicy, SessionTable
from quorumkv.kv.validation import check_command, check_lease_id, check_range_request
from quorumkv.kv.watch_history import events_between
from quorumkv.raft.entries import ConfState, SnapshotMeta

DEFAULT_MAP_SIZE = 8 << 30
"""Address space reserved for the data file; the file grows only as data is written."""

TEMPORARY_MAP_SIZE = 1 << 30

Payload: TypeAlias = Command | MembershipChange | ConfState | None
"""What a committed entry asks of the store: a command (perhaps a client's Session), a
membership change (with the member's record), a new membership alone, or nothing."""

Outcome: TypeAlias = Applied | AlreadyApplied | RequestError

_RESTORE_STAGING = "restore.tmp"


class PinnedImage:
    """One LMDB read transaction of the live store, to be copied out as an image."""

    def __init__(self, env: lmdb.Environment, txn: lmdb.Transaction[bytes]) -> None:
        self.env = env
        self.txn = txn

    def write_to(self, fd: int) -> None:
        """Write the image (compacted: free pages dropped) to the open file or pipe ``fd``,
        sequentially from its start. LMDB writes without holding the GIL."""
        with lmdb_errors("copying the state machine"):
            self.env.copyfd(fd, compact=True, txn=self.txn)


class KVStore:
    """The MVCC key-value state machine of one Raft group."""

    def __init__(self, path: Path, *, map_size: int, durable: bool, temporary: bool,
                 sessions: SessionPolicy) -> None:
        """Use :meth:`open` or :meth:`open_temporary`."""
        self._path = path
        self._map_size = map_size
        self._durable = durable
        self._temporary = temporary
        self._policy = sessions
        self._env: lmdb.Environment | None = None
        self._auth_epoch = 0
        """Bumped when a batch holding an auth change commits (see auth_view)."""
        self._attach(create=True)

    def _attach(self, *, create: bool) -> None:
        env = open_environment(self._path, map_size=self._map_size, durable=self._durable,
                               create=create)
        try:
            attached = attach(env, self._path)
        except BaseException:
            env.close()
            raise
        self._env = env
        self._history = History(attached.kv_db)
        self._meta = attached.meta_db
        self._leases = LeaseIndex(attached.meta_db)
        self._sessions = SessionTable(attached.sessions_db, self._policy)
        self._auth = AuthTable(attached.meta_db)
        self._auth_cache: tuple[int, AuthView] | None = None
        """(epoch, the committed auth state) for readers, read once per change (every
        request checks it)."""
        self._apply_view: AuthView | None = None
        """The auth state as of the entries applied so far, for the applying thread only:
        it may run ahead of what is committed to LMDB while a batch is open."""
        self._state = attached.state
        self._state_reader = StateReader(attached.meta_db, self._path)
        """How reads get the revisions: it decodes the state records only when they changed."""

    # -- opening and closing ------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, map_size: int = DEFAULT_MAP_SIZE, create: bool = True,
             sessions: SessionPolicy | None = None) -> KVStore:
        """Open the store in directory ``path`` (a snapshot copy will do); create it if asked.

        ``sessions`` sets how much the session table remembers; every replica
        of a group must use the same policy.
        """
        path = Path(path)
        if not create and not (path / DATA_FILE).is_file():
            raise DataDirError(f"no state machine in {path}")
        # A restore interrupted by a crash leaves its staging copy behind;
        # the store is whichever data file was in place.
        shutil.rmtree(path / _RESTORE_STAGING, ignore_errors=True)
        return cls(path, map_size=map_size, durable=True, temporary=False,
                   sessions=sessions or SessionPolicy())

    @classmethod
    def open_temporary(cls, *, map_size: int = TEMPORARY_MAP_SIZE,
                       sessions: SessionPolicy | None = None) -> KVStore:
        """A store in a fresh temporary directory, deleted on :meth:`close`.

        Same code and semantics as a real one, for simulations and tests;
        nothing in it needs to survive a crash, so it skips fsync.
        """
        path = Path(tempfile.mkdtemp(prefix="quorumkv-kv-"))
        try:
            return cls(path, map_size=map_size, durable=False, temporary=True,
                       sessions=sessions or SessionPolicy())
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def close(self) -> None:
        """Close the store (idempotent); a temporary store's directory goes with it."""
        self._close_env()
        if self._temporary:
            shutil.rmtree(self._path, ignore_errors=True)

    def _close_env(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _live_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StorageError("the state machine is closed")
        return self._env

    # -- state --------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def applied_index(self) -> int:
        return self._state.applied_index

    @property
    def applied_term(self) -> int:
        return self._state.applied_term

    @property
    def revision(self) -> int:
        return self._state.revision

    @property
    def compact_revision(self) -> int:
        return self._state.compact_revision

    @property
    def conf_state(self) -> ConfState:
        return self._state.conf_state

    @property
    def clock(self) -> int:
        """The latest leader timestamp applied (ns): what session expiry is measured by."""
        return self._state.clock

    # -- applying committed entries ----------------------------------------

    def apply(self, index: int, term: int, cmd: Command) -> Applied | AlreadyApplied:
        """Apply one command entry.

        If the command fails, the entry is recorded as applied all the same
        and then its RequestError is raised.
        """
        outcome = self.apply_batch([(index, term, cmd)])[0]
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    def apply_conf_state(self, index: int, term: int,
                         conf: ConfState) -> Applied | AlreadyApplied:
        """Record the membership a conf change entry produced."""
        outcome = self.apply_batch([(index, term, conf)])[0]
        assert not isinstance(outcome, RequestError)
        return outcome

    def apply_noop(self, index: int, term: int) -> Applied | AlreadyApplied:
        """Record an entry that carries nothing to apply (the leader's no-op)."""
        outcome = self.apply_batch([(index, term, None)])[0]
        assert not isinstance(outcome, RequestError)
        return outcome

    def apply_batch(self, entries: Iterable[tuple[int, int, Payload]]) -> list[Outcome]:
        """Apply consecutive entries ``(index, term, payload)`` in one LMDB transaction.

        Returns one outcome per entry: Applied, AlreadyApplied (index at or
        below the applied index), or the RequestError its command failed
        with. A Session already applied returns the outcome recorded then
        (an Applied at this entry's index with the first result and no
        events, or the same error). An index that skips ahead of the applied
        index, or a term that goes back, raises DataDirError and applies
        nothing: the state machine would miss entries, so it and the log do
        not belong together.
        """
        env = self._live_env()
        outcomes: list[Outcome] = []
        before = self._state
        run = _Run(before)
        sweep_interval = self._policy.sweep_interval
        with lmdb_errors("applying entries"):
            txn = env.begin(write=True)
            try:
                sessions = self._sessions.batch(txn)
                for index, term, payload in entries:
                    if index <= run.applied_index:
                        outcomes.append(AlreadyApplied(index=index,
                                                       applied_index=run.applied_index))
                        continue
                    _check_next(run.applied_index, run.applied_term, index, term)
                    outcomes.append(self._apply_one(txn, sessions, run, index, payload))
                    run.applied_index, run.applied_term = index, term
                    if index % sweep_interval == 0:
                        # By index and log time only, so every replica drops the
                        # same sessions at the same entry (see sessions.py).
                        sessions.expire(now=run.clock)
                if run.applied_index == before.applied_index:
                    txn.abort()
                    return outcomes
                sessions.flush()
                state = run.state()
                txn.put(STATE_KEY, encode_state(state), db=self._meta)
                if state.conf_state != before.conf_state:
                    txn.put(CONF_KEY, encode_conf(state.conf_state), db=self._meta)
                txn.commit()
                if run.auth_changed:
                    # A reader on another thread may have cached the state before this
                    # commit while the batch ran (auth_view): that view is stale now.
                    self._auth_epoch += 1
            except BaseException:
                txn.abort()
                self._apply_view = None  # it may hold what the aborted batch changed
                raise
        self._state = state
        return outcomes

    def _apply_one(self, txn: Txn, sessions: SessionBatch, run: _Run, index: int,
                   payload: Payload) -> Applied | RequestError:
        """Apply one entry's ``payload``, moving ``run`` on (all but its applied index)."""
        if payload is None:
            return Applied(index=index)
        if isinstance(payload, ConfState):
            run.conf_state = payload
            return Applied(index=index, conf_state=payload)
        if isinstance(payload, MembershipChange):
            self._record_member(txn, payload)
            run.conf_state = payload.conf
            return Applied(index=index, conf_state=payload.conf)
        try:
            check_command(payload)
        except RequestError as err:
            return err
        # The log's time never goes back, whichever leader stamped it. Whatever the
        # command does from here, failing included, the clock moves on.
        run.clock = max(run.clock, payload.timestamp)
        if isinstance(payload, Authorized):
            try:
                self._authorize(txn, payload)
            except RequestError as err:
                return err
            payload = payload.command
        if isinstance(payload, AuthChange):
            try:
                revision = self._auth.apply(txn, self._view(txn), payload)
            except RequestError as err:
                return err
            self._apply_view = None
            run.auth_changed = True
            return Applied(index=index, result=AuthResult(auth_revision=revision))
        if isinstance(payload, Session):
            return self._apply_session(txn, sessions, run, index, payload)
        return self._apply_write(txn, run, index, payload, payload.timestamp)

    def _view(self, txn: Txn) -> AuthView:
        if self._apply_view is None:
            self._apply_view = self._auth.view(txn)
        return self._apply_view

    def _authorize(self, txn: Txn, cmd: Authorized) -> None:
        """The user's permission for ``cmd`` at this point of the log (``auth.py``)."""
        view = self._view(txn)
        if not view.enabled:
            return
        inner = cmd.command.command if isinstance(cmd.command, Session) else cmd.command
        if isinstance(inner, AuthChange):
            if cmd.user is None or not view.is_root(cmd.user):
                view.check(cmd.user, [])  # Unauthenticated, or a user that is gone
                raise PermissionDenied("only a user with the role 'root' may change users, "
                                       "roles or auth", user=cmd.user)
            return
        lease_keys = (self._leases.keys(txn, inner.id) if isinstance(inner, LeaseRevoke)
                      else ())
        view.check(cmd.user, needs_of(inner, lease_keys))

    def auth_view(self) -> AuthView:
        """Users, roles and the auth switch as of the last applied entry."""
        # apply_batch runs in a worker thread: a view read before an auth change
        # committed carries the epoch it was read in, and is not used once that moved on.
        # One tuple assignment, so no lock (this package imports no threading).
        cached = self._auth_cache
        if cached is not None and cached[0] == self._auth_epoch:
            return cached[1]
        epoch = self._auth_epoch
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            view = self._auth.view(txn)
        self._auth_cache = (epoch, view)
        return view

    def _record_member(self, txn: Txn, change: MembershipChange) -> None:
        key = member_key(change.node_id)
        if change.removed:
            txn.delete(key, db=self._meta)
        elif change.member is not None:
            txn.put(key, encode_member(change.member), db=self._meta)

    def members(self) -> dict[int, MemberRecord]:
        """The member registry (``members.py``): every recorded member by node id."""
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return self._read_members(txn)

    def _read_members(self, txn: Txn) -> dict[int, MemberRecord]:
        out: dict[int, MemberRecord] = {}
        cursor = txn.cursor(db=self._meta)
        if cursor.set_range(MEMBER_PREFIX):
            for key, value in cursor:
                if not key.startswith(MEMBER_PREFIX):
                    break
                out[node_id_of_key(key)] = decode_member(value)
        return out

    def _apply_write(self, txn: Txn, run: _Run, index: int, cmd: Write,
                     timestamp: int) -> Applied | RequestError:
        """Apply ``cmd`` stamped ``timestamp``."""
        applier = Applier(self._history, self._leases, txn, revision=run.revision,
                          compact_revision=run.compact_revision)
        try:
            result = applier.apply(cmd, timestamp=timestamp)
        except RequestError as err:
            # Raised before any write (see applier.py): nothing to undo.
            return err
        run.revision, run.compact_revision = applier.revision, applier.compact_revision
        return Applied(index=index, result=result, events=tuple(applier.events))

    def _apply_session(self, txn: Txn, sessions: SessionBatch, run: _Run, index: int,
                       session: Session) -> Applied | RequestError:
        """Apply a client's write unless it was applied before (thesis §6.3)."""
        client_id, seq, now = session.client_id, session.seq, run.clock
        try:
            recorded = sessions.recorded(client_id, seq)
        except RequestError as err:  # too old to tell: applying it could apply it twice
            sessions.note(client_id, seq, now=now)
            return err
        if recorded is not None:
            sessions.note(client_id, seq, now=now)
            if isinstance(recorded, RequestError):
                return recorded
            # The first attempt's result; no events, since nothing changed.
            return Applied(index=index, result=recorded)
        outcome = self._apply_write(txn, run, index, session.command, session.timestamp)
        if isinstance(outcome, Applied):
            assert outcome.result is not None
            sessions.note(client_id, seq, now=now, outcome=outcome.result)
        else:
            sessions.note(client_id, seq, now=now, outcome=outcome)
        return outcome

    def sync(self) -> None:
        """Make everything applied so far durable.

        Applies are durable only up to their last transaction or so (see
        ``environment.py``); a server that truncates its log at the applied
        index, rather than at a snapshot, calls this first.
        """
        env = self._live_env()
        if self._durable:
            with lmdb_errors("syncing"):
                env.sync(True)

    # -- reads --------------------------------------------------------------

    def range(self, req: RangeRequest) -> RangeResult:
        """Answer a read from this replica's state (as of ``req.revision`` if set).

        Raises Compacted below the compact revision and InvalidArgument for
        a revision this replica has not reached.
        """
        check_range_request(req)
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            state = self._state_reader.read(txn)
            check_read_revision(req.revision, current=state.revision,
                                compact_revision=state.compact_revision)
            return read_range(self._history, txn, req, current=state.revision)

    def get(self, key: bytes, *, revision: int = 0) -> KeyValue | None:
        """The live version of ``key`` (as of ``revision`` if set), or None."""
        result = self.range(RangeRequest(key=key, revision=revision))
        return result.kvs[0] if result.kvs else None

    def leases(self) -> dict[int, int]:
        """Every granted lease: id -> ttl (seconds)."""
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return self._leases.leases(txn)

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to lease ``lease_id``, sorted (none if it is not granted)."""
        check_lease_id(lease_id)
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return self._leases.keys(txn, lease_id)

    def lease_exists(self, lease_id: int) -> bool:
        """Whether lease ``lease_id`` is granted (and not revoked)."""
        return self.lease_ttl(lease_id) is not None

    def lease_ttl(self, lease_id: int) -> int | None:
        """Lease ``lease_id``'s TTL (seconds), None if it is not granted."""
        check_lease_id(lease_id)
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return self._leases.ttl(txn, lease_id)

    def events_since(self, *, key: bytes, range_end: bytes | None, start_revision: int,
                     end_revision: int, limit: int = 0) -> list[Event]:
        """The changes to keys in (``key``, ``range_end``) at revisions
        ``start_revision`` .. ``end_revision``, as the Events their entries produced
        (prev_kv included), in order; Compacted if that history is gone. ``limit``
        never splits a revision (see ``watch_history.py``)."""
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            state = self._state_reader.read(txn)
            found = events_between(txn, self._history, key=key, range_end=range_end,
                                   start_revision=start_revision,
                                   end_revision=min(end_revision, state.revision),
                                   compact_revision=state.compact_revision, prev_kv=True,
                                   limit=limit)
        return [event for _, _, event in found]

    def digest(self) -> str:
        """SHA-256 (hex) of the logical state: the revisions, the clock, every live key
        with its metadata, the session table, the membership, the member registry,
        and the leases with their attached keys.

        Replicas that applied the same entries have the same digest however
        they got there (replay, restart, snapshot). The applied index and
        history below the newest versions are not part of it.
        """
        digest = hashlib.sha256()
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            state = self._state_reader.read(txn)
            digest.update(pack([b"quorumkv-kv", FORMAT, state.revision,
                                state.compact_revision, state.clock]))
            # msgpack values delimit themselves, so the stream is unambiguous:
            # versions are arrays of 7, the marker a binary, session records
            # arrays of 2.
            for kv in self._history.scan(txn, SCAN_ALL_START, ALL_KEYS):
                digest.update(encode_kv(kv))
            digest.update(pack(b"sessions"))
            for key, value in self._sessions.items(txn):
                digest.update(pack([key, value]))
            digest.update(pack([b"members", sorted(state.conf_state.voters),
                                sorted(state.conf_state.learners)]))
            for node_id, rec in sorted(self._read_members(txn).items()):
                digest.update(pack(node_id))
                digest.update(encode_member(rec))
            # Only a store that has leases hashes them (after a binary marker,
            # unlike a member's id or record), so a store without leases keeps
            # the digest it had before leases existed.
            marked = False
            for key, value in self._leases.items(txn):
                if not marked:
                    digest.update(pack(b"leases"))
                    marked = True
                digest.update(pack([key, value]))
            # Likewise auth records, after their own marker.
            marked = False
            for key, value in self._auth.items(txn):
                if not marked:
                    digest.update(pack(b"auth"))
                    marked = True
                digest.update(pack([key, value]))
        return digest.hexdigest()

    def session_count(self) -> int:
        """Client sessions held: what expiry bounds."""
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return self._sessions.clients(txn)

    def history_size(self) -> int:
        """Versions stored, tombstones included: what compaction shrinks."""
        with lmdb_errors("reading"), self._live_env().begin() as txn:
            return txn.stat(self._history.db)["entries"]

    # -- snapshots ----------------------------------------------------------

    def snapshot_to(self, path: str | Path) -> SnapshotMeta:
        """Write a consistent, compacted copy of the store into directory ``path``.

        ``path`` must be missing or empty. Writers may go on meanwhile: the
        copy is one LMDB read snapshot, and the metadata returned (applied
        index and term, membership) is that snapshot's. The copy's data file
        is flushed; making its directory entry durable (sync the parent,
        rename into place) is the caller's business, as for any new file.
        """
        dest = Path(path)
        with lmdb_errors(f"writing a snapshot to {dest}"):
            dest.mkdir(parents=True, exist_ok=True)
            if any(dest.iterdir()):
                raise DataDirError(f"snapshot destination {dest} is not empty")
        with self.pinned_image() as (meta, image), lmdb_errors(f"writing a snapshot to {dest}"):
            image.env.copy(str(dest), compact=True, txn=image.txn)
        if self._durable:
            flush_copy(dest)
        return meta

    @contextmanager
    def pinned_image(self) -> Iterator[tuple[SnapshotMeta, PinnedImage]]:
        """The store as of now, held still while the caller copies it (``write_to``).

        The metadata is known before the first byte is copied, so a snapshot
        file can begin with it. Writers go on meanwhile; everything committed
        before is flushed first, so the store on disk never falls behind a
        snapshot taken from it (after which the log may be cut)."""
        env = self._live_env()
        with lmdb_errors("pinning the state machine for a snapshot"):
            self.sync()
            txn = env.begin()
        try:
            with lmdb_errors("reading the state machine for a snapshot"):
                state = self._state_reader.read(txn)
            yield (SnapshotMeta(index=state.applied_index, term=state.applied_term,
                                conf=state.conf_state), PinnedImage(env, txn))
        finally:
            txn.abort()

    def restore_from(self, path: str | Path) -> SnapshotMeta:
        """Replace this store's contents with the snapshot in directory ``path``.

        The snapshot is checked, copied next to the data file, flushed, and
        renamed over it, so a crash leaves either the old store or the new
        one. (The rename is durable once the directory is synced; a server
        that restarts with the old store simply restores again.) The
        snapshot directory is left untouched.
        """
        self._live_env()
        staging = self._path / _RESTORE_STAGING
        with lmdb_errors(f"restoring from {path}"):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
        try:
            state = copy_checked(Path(path), staging)
            if self._durable:
                flush_copy(staging)
            # Readers go on with the auth view while the store is closed (see below), so
            # there must be one, even if nothing has asked for it yet.
            self.auth_view()
            self._close_env()
            self._apply_view = None
            with lmdb_errors(f"restoring from {path}"):
                (staging / DATA_FILE).replace(self._path / DATA_FILE)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if self._env is None:
                self._attach(create=False)
                # Only now: while the store was closed, readers kept the view they had
                # (every request reads it; none may fail for the restore). A view read
                # from the old store just before it closed is dropped by the new epoch.
                self._auth_epoch += 1
        return SnapshotMeta(index=state.applied_index, term=state.applied_term,
                            conf=state.conf_state)


class _Run:
    """The store's state as one batch moves it on, entry by entry; a StoreState is built
    from it once, for the batch's commit."""

    __slots__ = ("applied_index", "applied_term", "auth_changed", "clock", "compact_revision",
                 "conf_state", "revision")

    def __init__(self, state: StoreState) -> None:
        self.revision = state.revision
        self.compact_revision = state.compact_revision
        self.applied_index = state.applied_index
        self.applied_term = state.applied_term
        self.conf_state = state.conf_state
        self.clock = state.clock
        self.auth_changed = False
        """An auth change was applied (auth_view's cache must go)."""

    def state(self) -> StoreState:
        return StoreState(revision=self.revision, compact_revision=self.compact_revision,
                          applied_index=self.applied_index, applied_term=self.applied_term,
                          conf_state=self.conf_state, clock=self.clock)


def _check_next(applied_index: int, applied_term: int, index: int, term: int) -> None:
    if index != applied_index + 1:
        raise DataDirError(f"entry {index} comes after applied index {applied_index}: "
                           f"entries would be skipped")
    if term < applied_term:
        raise DataDirError(f"entry {index} has term {term}, below the applied term "
                           f"{applied_term}")
