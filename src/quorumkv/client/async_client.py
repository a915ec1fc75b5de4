"""The asyncio client.

::

    async with AsyncClient(["127.0.0.1:2379", "127.0.0.1:2380"]) as kv:
        await kv.put("greeting", "hello")
        item = await kv.get("greeting")            # KeyValue or None
        ok = await kv.compare_and_swap("greeting", b"hello", b"bye")

Keys and values may be ``bytes`` or ``str`` (encoded as UTF-8); results
carry bytes. A write with consistency "one" is answered once it is durable
in the leader's log, before it is applied, so its result has revision 0
(unknown) and no previous values; a txn (and so compare_and_swap) needs its
outcome and refuses "one". Every method may be called concurrently: requests share one
pipelined connection. How requests fail over and retry is described in
``retrying_caller.py``; what the consistency levels promise is in the design
(one, session, quorum, all). Writes are never applied twice by a retry: each
carries this client's random id and a sequence number the node deduplicates.

The membership methods (``member_list``, ``member_add``, ``member_remove``,
``member_promote``, ``leave``) take the cluster token; a node refuses a wrong
one with AuthenticationFailed.

``snapshot_save`` streams a backup of one node's store into a file (see
``snapshot.py``); ``quorumkv snapshot restore`` makes a new cluster from it.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from quorumkv.client.auth_admin import AuthAdmin
from quorumkv.client.auth_session import SignIn
from quorumkv.client.coordination_wire import (
    LeaseKeepAliveRequest,
    LeaseListRequest,
    LeaseTimeToLiveRequest,
    WatchRequest,
)
from quorumkv.client.endpoints import Backoff, Endpoints
from quorumkv.client.lease import Lease
from quorumkv.client.members import (
    DEFAULT_TOKEN,
    Member,
    Membership,
    digest_from_wire,
    member_result_from_wire,
    membership_from_wire,
)
from quorumkv.client.protocol import (
    READ_CONSISTENCY,
    DigestRequest,
    Durable,
    LeaveRequest,
    MemberAddRequest,
    MemberListRequest,
    MemberPromoteRequest,
    MemberRemoveRequest,
    MoveLeaderRequest,
    ReadRequest,
    StatusRequest,
    WriteRequest,
)
from quorumkv.client.results_wire import RangeParts, range_parts_from_wire, write_parts_from_wire
from quorumkv.client.retrying_caller import RetryingCaller
from quorumkv.client.snapshot import DEFAULT_STALL_TIMEOUT, Progress, save_backup
from quorumkv.client.watch import Watch
from quorumkv.errors import InvalidArgument, ProtocolError
from quorumkv.kv.commands import (
    Command,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
    TxnOp,
)
from quorumkv.kv.keys import ALL_KEYS, MAX_REVISION, prefix_end
from quorumkv.kv.results import (
    CompactResult,
    DeleteResult,
    KeyValue,
    LeaseGrantResult,
    LeaseRevokeResult,
    PutResult,
    RangeResult,
    Result,
    TxnResult,
)
from quorumkv.kv.validation import check_command, check_range_request
from quorumkv.security.tls import TLSSettings
from quorumkv.storage.backup_file import BackupInfo
from quorumkv.transport.framing import DEFAULT_MAX_FRAME

KeyLike = bytes | str
_R = TypeVar("_R", PutResult, DeleteResult, TxnResult, CompactResult, LeaseGrantResult,
             LeaseRevokeResult)


def to_bytes(what: str, value: KeyLike) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    raise InvalidArgument(f"{what} must be bytes or str, not {type(value).__name__}")


def _level(consistency: str, what: str) -> str:
    if consistency not in READ_CONSISTENCY:
        raise InvalidArgument(f"{what} must be one of {', '.join(READ_CONSISTENCY)}, "
                              f"not {consistency!r}")
    return consistency


class AsyncClient(AuthAdmin):
    """A client of one quorumkv cluster; see the module docstring."""

    def __init__(self, endpoints: Sequence[str], *, timeout: float = 5.0,
                 read_consistency: str = "quorum", write_consistency: str = "quorum",
                 cluster_id: object = None, max_frame: int = DEFAULT_MAX_FRAME,
                 backoff: float = 0.05, max_backoff: float = 1.0,
                 tls: TLSSettings | None = None, user: str | None = None,
                 password: str | None = None) -> None:
        """``timeout`` bounds each call, retries included. ``cluster_id``, if given,
        makes the client refuse nodes of any other cluster. ``tls``: how to speak TLS to
        nodes whose client ports do (docs/security.md). ``user`` and ``password``: whom every
        connection signs in as, on a cluster with auth enabled (auth_session.py); the
        password is kept in memory only."""
        if not timeout > 0:
            raise InvalidArgument("timeout must be positive")
        if (user is None) != (password is None):
            raise InvalidArgument("give both user and password, or neither")
        self._sign_in = None if user is None or password is None else SignIn(user, password)
        self._read_consistency = _level(read_consistency, "read_consistency")
        self._write_consistency = _level(write_consistency, "write_consistency")
        # Jitter only needs to differ between clients; it must not draw from
        # the global random state, which simulations seed.
        jitter = random.Random(secrets.randbits(64))
        self._caller = RetryingCaller(Endpoints(endpoints), timeout=timeout,
                                      cluster_id=cluster_id, max_frame=max_frame,
                                      backoff=Backoff(backoff, max_backoff, jitter),
                                      tls=tls, sign_in=self._sign_in)
        self.client_id = secrets.randbits(63) or 1
        """Random, so clients need no registration; never 0, which means "no deduplication"."""
        self._seq = 0
        self._revision = 0

    @property
    def revision(self) -> int:
        """The highest store revision this client has seen; "session" reads wait for it."""
        return self._revision

    @property
    def server_info(self) -> dict[str, Any] | None:
        """The hello of the node the client last connected to."""
        return self._caller.server_info

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._caller.close()

    # -- writes ----------------------------------------------------------------------

    async def put(self, key: KeyLike, value: KeyLike, *, lease: int = 0, prev_kv: bool = False,
                  consistency: str | None = None) -> PutResult:
        cmd = Put(key=to_bytes("key", key), value=to_bytes("value", value), lease=lease,
                  prev_kv=prev_kv)
        return _expect(await self._write(cmd, consistency), PutResult, PutResult(revision=0))

    async def delete(self, key: KeyLike, *, range_end: KeyLike | None = None,
                     prev_kv: bool = False, consistency: str | None = None) -> DeleteResult:
        end = None if range_end is None else to_bytes("range_end", range_end)
        cmd = DeleteRange(key=to_bytes("key", key), range_end=end, prev_kv=prev_kv)
        return _expect(await self._write(cmd, consistency), DeleteResult,
                       DeleteResult(revision=0, deleted=0))

    async def txn(self, compares: Sequence[Compare], success: Sequence[TxnOp],
                  failure: Sequence[TxnOp] = (), *, consistency: str | None = None) -> TxnResult:
        cmd = Txn(compares=tuple(compares), success=tuple(success), failure=tuple(failure))
        return _expect(await self._write(cmd, consistency, needs_outcome=True), TxnResult)

    async def compare_and_swap(self, key: KeyLike, expected: KeyLike | None, value: KeyLike, *,
                               consistency: str | None = None) -> bool:
        """Set ``key`` to ``value`` if its value is ``expected`` (None: if it does not exist)."""
        k = to_bytes("key", key)
        if expected is None:
            # A missing key has version 0 (etcd's convention for "does not exist").
            cmp = Compare(key=k, target=CompareTarget.VERSION, op=CompareOp.EQUAL, value=0)
        else:
            cmp = Compare(key=k, target=CompareTarget.VALUE, op=CompareOp.EQUAL,
                          value=to_bytes("expected", expected))
        put = Put(key=k, value=to_bytes("value", value))
        result = await self.txn([cmp], [put], consistency=consistency)
        return result.succeeded

    async def compact(self, revision: int, *, consistency: str | None = None) -> CompactResult:
        result = await self._write(Compact(revision=revision), consistency)
        return _expect(result, CompactResult, CompactResult(revision=0, compact_revision=revision))

    async def _write(self, cmd: Command, consistency: str | None, *,
                     needs_outcome: bool = False) -> Result | Durable:
        level = _level(consistency or self._write_consistency, "consistency")
        if level == "session":
            level = "quorum"  # the design: a session write is a quorum write
        if level == "one" and needs_outcome:
            raise InvalidArgument("a txn's outcome is known only once it is applied; "
                                  "use consistency 'quorum' or 'all'")
        check_command(cmd)  # a malformed command fails here, before any retry loop
        self._seq += 1
        # One request object for every attempt: retries carry the same seq.
        req = WriteRequest(cmd=cmd, consistency=level, client_id=self.client_id, seq=self._seq)
        result, revision = write_parts_from_wire(await self._caller.call(req))
        self._observe(revision)
        return result

    # -- reads -----------------------------------------------------------------------

    async def get(self, key: KeyLike, *, revision: int = 0,
                  consistency: str | None = None) -> KeyValue | None:
        # range() without its RangeResult: one key is all a get gives back.
        kvs = (await self._read(key, None, 0, revision, False, False, consistency))[0]
        return kvs[0] if kvs else None

    async def range(self, key: KeyLike, range_end: KeyLike | None = None, *, limit: int = 0,
                    revision: int = 0, keys_only: bool = False, count_only: bool = False,
                    consistency: str | None = None) -> RangeResult:
        """Keys in [key, range_end); ``range_end`` None: just ``key``; ``b"\\0"``: all >= key."""
        kvs, count, more, at, _ = await self._read(key, range_end, limit, revision,
                                                   keys_only, count_only, consistency)
        return RangeResult(kvs=kvs, count=count, more=more, revision=at)

    async def _read(self, key: KeyLike, range_end: KeyLike | None, limit: int, revision: int,
                    keys_only: bool, count_only: bool, consistency: str | None) -> RangeParts:
        end = None if range_end is None else to_bytes("range_end", range_end)
        k = to_bytes("key", key)
        req = RangeRequest(key=k, range_end=end, limit=limit, revision=revision,
                           keys_only=keys_only, count_only=count_only)
        # What check_range_request accepts in the usual case, seen at a glance; anything
        # else it checks in full, and says what is wrong.
        if not (type(k) is bytes and k and end is None and type(limit) is int
                and type(revision) is int and 0 <= (limit | revision) <= MAX_REVISION
                and type(keys_only) is bool and type(count_only) is bool):
            check_range_request(req)
        level = _level(consistency or self._read_consistency, "consistency")
        min_revision = self._revision if level == "session" else 0
        parts = range_parts_from_wire(await self._caller.call(
            ReadRequest(range=req, consistency=level, min_revision=min_revision)))
        self._observe(parts[4])
        return parts

    async def scan_prefix(self, prefix: KeyLike, *, limit: int = 0, revision: int = 0,
                          keys_only: bool = False, count_only: bool = False,
                          consistency: str | None = None) -> RangeResult:
        """Every key starting with ``prefix`` (an empty prefix: every key)."""
        p = to_bytes("prefix", prefix)
        # The empty key is not a key, so b"\0" is the smallest one there is.
        key, end = (p, prefix_end(p)) if p else (b"\x00", ALL_KEYS)
        return await self.range(key, end, limit=limit, revision=revision, keys_only=keys_only,
                                count_only=count_only, consistency=consistency)

    async def status(self, *, local: bool = False) -> dict[str, Any]:
        """The contacted node's view of itself and the cluster, as the node reports it.

        ``local``: only what the node knows itself, without asking the leader for its view.
        """
        body = await self._caller.call(StatusRequest(local=local))
        header = body.get("header")
        if isinstance(header, dict) and type(header.get("revision")) is int:
            self._observe(header["revision"])
        return body

    async def digest(self) -> dict[str, Any]:
        """``{"digest", "applied_index", "revision"}`` of the answering node's store.

        Compare the digests of replicas at the same applied index to check they agree.
        """
        digest, header = digest_from_wire(await self._caller.call(DigestRequest()))
        self._observe(header.revision)
        return digest

    async def snapshot_save(self, path: str | Path, *, progress: Progress | None = None,
                            stall_timeout: float = DEFAULT_STALL_TIMEOUT) -> BackupInfo:
        """Save a backup of a node's store (the one this client is connected to, or the
        next that can take one) in ``path``.

        The node copies its store after a read index, so the backup holds every write
        acknowledged before the call. ``path`` is replaced only by a complete, checked
        backup (written to ``path.part`` first). ``progress(received, total)`` is called
        (bytes) as it arrives, on the client's event loop. A node that cannot start one
        (no leader, stopping, unreachable) is left for the next endpoint; the call fails
        (Timeout) once the nodes send nothing for ``stall_timeout`` seconds: copying a
        large store may take longer than a request's timeout. Returns the backup's
        header and SHA-256.
        """
        if not stall_timeout > 0:
            raise InvalidArgument("stall_timeout must be positive")
        info = await save_backup(self._caller, Path(path), progress=progress,
                                 stall_timeout=stall_timeout)
        self._observe(info.header.revision)
        return info

    # -- membership ------------------------------------------------------------------

    async def membership(self) -> Membership:
        """The members, the leader's name and the cluster id, as the answering node knows them."""
        membership, header = membership_from_wire(await self._caller.call(MemberListRequest()))
        self._observe(header.revision)
        return membership

    async def member_list(self) -> list[Member]:
        return list((await self.membership()).members)

    async def member_add(self, name: str, peer_address: str, *,
                         client_address: str | None = None, learner: bool = False,
                         token: str = DEFAULT_TOKEN) -> Member:
        """Add a node, always as a learner first so it cannot weaken the quorum while it
        catches up; the leader then promotes it to voter, unless ``learner`` keeps it one."""
        req = MemberAddRequest(name=name, peer_address=peer_address,
                               client_address=client_address, learner=learner, token=token)
        return await self._member_call(req, "member")

    async def member_remove(self, name: str, *, token: str = DEFAULT_TOKEN) -> Member:
        """Remove a member; returns it as it was."""
        return await self._member_call(MemberRemoveRequest(name=name, token=token), "removed")

    async def member_promote(self, name: str, *, token: str = DEFAULT_TOKEN) -> Member:
        """Make a learner a voter."""
        return await self._member_call(MemberPromoteRequest(name=name, token=token), "member")

    async def move_leader(self, name: str, *, token: str = DEFAULT_TOKEN) -> str:
        """Make the voter ``name`` the leader (the current leader hands over); returns
        once it leads."""
        body = await self._caller.call(MoveLeaderRequest(name=name, token=token))
        leader = body.get("leader")
        if not isinstance(leader, str):
            raise ProtocolError("a move_leader answer without the leader's name")
        return leader

    async def leave(self, *, token: str = DEFAULT_TOKEN) -> Member:
        """Ask the node this client is connected to (its first reachable endpoint) to leave
        the cluster and stop; returns the member that left.

        Give the client that one node's endpoint only: if the answer is lost, the request
        is retried like any other, and with several endpoints another node could get it.
        """
        return await self._member_call(LeaveRequest(token=token), "left")

    async def _member_call(self, req: MemberAddRequest | MemberRemoveRequest
                           | MemberPromoteRequest | LeaveRequest, key: str) -> Member:
        member, header = member_result_from_wire(await self._caller.call(req), key)
        self._observe(header.revision)
        return member

    # -- watches ---------------------------------------------------------------------

    def watch(self, key: KeyLike, range_end: KeyLike | None = None, *, prefix: bool = False,
              start_revision: int = 0, prev_kv: bool = False,
              progress_notify: bool = False) -> Watch:
        """Every change to ``key`` (or ``[key, range_end)``, or keys starting with ``key``
        when ``prefix``), from ``start_revision`` (0: from now), in revision order, each
        exactly once even across failovers. Use ``async with`` (or :meth:`Watch.cancel`);
        iterate for :class:`WatchResponse` batches. See ``watch.py``."""
        k = to_bytes("key", key)
        end: bytes | None
        if prefix:
            if range_end is not None:
                raise InvalidArgument("give range_end or prefix, not both")
            k, end = (k, prefix_end(k)) if k else (b"\x00", ALL_KEYS)
        else:
            end = None if range_end is None else to_bytes("range_end", range_end)
        if start_revision < 0:
            raise InvalidArgument("start_revision must not be negative")
        return Watch(self._caller, WatchRequest(key=k, range_end=end,
                                                start_revision=start_revision,
                                                prev_kv=prev_kv,
                                                progress_notify=progress_notify))

    # -- leases ----------------------------------------------------------------------

    async def grant_lease(self, ttl: int, *, keep_alive: bool = True) -> Lease:
        """A new lease of ``ttl`` seconds, kept alive in the background unless told not
        to; attach keys with ``put(..., lease=lease.id)``. See ``lease.py``."""
        lease_id = secrets.randbits(63) or 1
        requested_at = asyncio.get_running_loop().time()
        result = await self._write(LeaseGrant(id=lease_id, ttl=ttl), None, needs_outcome=True)
        granted = _expect(result, LeaseGrantResult)
        return Lease(lease_id=granted.id, ttl=granted.ttl, keepalive=self.lease_keepalive,
                     revoke=self.revoke_lease, keep_alive=keep_alive,
                     requested_at=requested_at)

    async def revoke_lease(self, lease_id: int) -> LeaseRevokeResult:
        """Revoke a lease: every key attached to it is deleted, at one revision."""
        result = await self._write(LeaseRevoke(id=lease_id), None, needs_outcome=True)
        return _expect(result, LeaseRevokeResult)

    async def lease_keepalive(self, lease_id: int) -> int:
        """Renew a lease for its full TTL (the leader answers); returns the TTL."""
        body = await self._caller.call(LeaseKeepAliveRequest(id=lease_id))
        ttl = body.get("ttl")
        if type(ttl) is not int:
            raise ProtocolError("a keep-alive answer without its ttl")
        return ttl

    async def lease_ttl(self, lease_id: int, *, keys: bool = False) -> dict[str, Any]:
        """``{"id", "ttl", "remaining", "keys"}``: the leader's view of a lease."""
        body = await self._caller.call(LeaseTimeToLiveRequest(id=lease_id, keys=keys))
        return {k: body.get(k) for k in ("id", "ttl", "remaining", "keys")}

    async def leases(self) -> dict[int, int]:
        """Every lease: id -> TTL."""
        body = await self._caller.call(LeaseListRequest())
        out: dict[int, int] = {}
        for item in body.get("leases") or []:
            if isinstance(item, dict) and type(item.get("id")) is int \
                    and type(item.get("ttl")) is int:
                out[item["id"]] = item["ttl"]
        return out

    def _observe(self, revision: int) -> None:
        self._revision = max(self._revision, revision)


def _expect(result: Result | Durable, cls: type[_R], not_applied_yet: _R | None = None) -> _R:
    """``result`` as the type the call promises; a "one" write gets ``not_applied_yet``."""
    if isinstance(result, Durable) and not_applied_yet is not None:
        return not_applied_yet
    if not isinstance(result, cls):
        raise ProtocolError(f"expected a {cls.__name__} from the server, "
                            f"got a {type(result).__name__}")
    return result
