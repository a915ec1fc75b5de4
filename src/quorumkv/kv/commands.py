"""The commands the key-value state machine applies, and the read request.

A command is what a client asks to change; the leader stamps it with its
wall clock (``timestamp``, nanoseconds) when it proposes it, encodes it with
:mod:`quorumkv.kv.codec` and appends it to the log. Every replica applies the
same bytes and so reaches the same state: nothing in a command is read from
the replica applying it. A write that a client numbered (a client id and a
sequence number) is logged inside a :class:`Session`, which the store applies
at most once however often it is retried (thesis §6.3).

Key ranges follow etcd: ``range_end`` None means the single key ``key``;
``range_end`` equal to :data:`~quorumkv.kv.keys.ALL_KEYS` (``b"\\0"``) means
every key >= ``key``; anything else is the half-open interval
``[key, range_end)``. :func:`~quorumkv.kv.keys.prefix_end` builds the end of
a prefix range.

Leases follow etcd v3: :class:`LeaseGrant` creates one, a :class:`Put` with
``lease`` set attaches its key to it, and :class:`LeaseRevoke` deletes the
lease with every key still attached. No command carries a clock reading
that decides expiry: the leader decides it and proposes the revoke.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from quorumkv.kv.keys import prefix_end


class CompareTarget(enum.IntEnum):
    """What a :class:`Compare` looks at (numbered as in etcd's protocol)."""

    VERSION = 0
    CREATE_REVISION = 1
    MOD_REVISION = 2
    VALUE = 3
    LEASE = 4


class CompareOp(enum.IntEnum):
    EQUAL = 0
    GREATER = 1
    LESS = 2
    NOT_EQUAL = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Put:
    key: bytes
    value: bytes
    lease: int = 0
    """Attach the key to this granted lease (LeaseNotFound if it is not); 0: to none."""
    prev_kv: bool = False
    """Return the version this put replaced."""
    timestamp: int = 0
    """Leader's clock at proposal (ns). Inside a :class:`Txn`, leave it 0: the Txn's applies."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteRange:
    key: bytes
    range_end: bytes | None = None
    prev_kv: bool = False
    """Return the versions this delete removed."""
    timestamp: int = 0

    @classmethod
    def prefix(cls, prefix: bytes, *, prev_kv: bool = False) -> DeleteRange:
        return cls(key=prefix, range_end=prefix_end(prefix), prev_kv=prev_kv)


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeRequest:
    """A read. Served by a replica directly, or inside a :class:`Txn` through the log."""

    key: bytes
    range_end: bytes | None = None
    limit: int = 0
    """At most this many keys (0: no limit); ``count`` still counts them all."""
    revision: int = 0
    """Read the store as of this revision (0: the current one)."""
    keys_only: bool = False
    count_only: bool = False

    @classmethod
    def prefix(cls, prefix: bytes, *, limit: int = 0, revision: int = 0,
               keys_only: bool = False, count_only: bool = False) -> RangeRequest:
        return cls(key=prefix, range_end=prefix_end(prefix), limit=limit, revision=revision,
                   keys_only=keys_only, count_only=count_only)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """A condition on the current version of a key (or of every key in a range).

    ``value`` is bytes when ``target`` is VALUE, an int otherwise. As in etcd,
    a missing key has version, create and mod revision and lease 0, and any
    comparison of the VALUE of a missing key is false; over a range, the
    condition must hold for every key in it.
    """

    key: bytes
    target: CompareTarget
    op: CompareOp
    value: bytes | int
    range_end: bytes | None = None


TxnOp = Put | DeleteRange | RangeRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class Txn:
    """If every compare holds, run ``success``; otherwise ``failure``.

    All writes of one Txn share one new revision (told apart by their sub
    revision), and a Txn that writes nothing leaves the revision alone. Ops
    run in order and each sees the writes before it. A Txn without compares
    is a batch.
    """

    compares: tuple[Compare, ...] = ()
    success: tuple[TxnOp, ...] = ()
    failure: tuple[TxnOp, ...] = ()
    timestamp: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Compact:
    """Drop history older than ``revision`` (reads below it then fail with Compacted)."""

    revision: int
    timestamp: int = 0


MAX_LEASE_TTL = 9_000_000_000
"""The longest lease a client may ask for, in seconds (etcd's ``MaxLeaseTTL``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseGrant:
    """Create lease ``id``, which lives ``ttl`` seconds unless kept alive (as in etcd v3).

    The client picks the id (at random, 63 bits, never 0), so a retry names
    the same lease. The state machine only records the lease: deciding that
    it expired is the leader's business, outside the state machine, and ends
    in a :class:`LeaseRevoke`. A grant writes no key and so takes no revision.
    """

    id: int
    ttl: int
    """Seconds, from 1 to :data:`MAX_LEASE_TTL`."""
    timestamp: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class LeaseRevoke:
    """Delete every key attached to lease ``id`` (at one new revision, if any) and the lease.

    A key is attached to the lease of its latest :class:`Put`; a later put
    with another lease (or lease 0) or a delete detaches it.
    """

    id: int
    timestamp: int = 0


Write = Put | DeleteRange | Txn | Compact | LeaseGrant | LeaseRevoke
"""A change a client asks for. Leases are not Txn ops."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """A client's numbered write: the log entry of a write that must apply at most once.

    A client that gets no answer (a timeout, a lost connection, a leader that
    crashed) cannot know whether its write was applied, so it sends it again
    with the same ``(client_id, seq)``. The state machine remembers the outcome
    of each client's recent writes and answers a repeat from that record
    instead of applying it twice (thesis §6.3); see ``sessions.py``.

    The node wraps a client's command in a Session when the request carries a
    client_id; clients never send one themselves.
    """

    client_id: int
    """Chosen at random by the client, never 0 (0 on the wire means "no deduplication")."""
    seq: int
    """The client's number for this write, from 1; a retry reuses it."""
    command: Write
    """Leave its timestamp 0: the Session's applies (as for the ops of a :class:`Txn`)."""
    timestamp: int = 0


AUTH_ACTIONS = frozenset({
    "enable", "disable", "user_add", "user_delete", "user_passwd", "user_grant_role",
    "user_revoke_role", "role_add", "role_delete", "role_grant", "role_revoke"})


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthChange:
    """A change to users, roles or the auth switch (``auth.py`` applies it).

    The proposing node fills in what must not be computed while applying:
    ``password_hash`` (salted scrypt, never the password) and, for
    ``enable``, the token-signing ``secret``. Clients never send one: the
    node builds it from an auth request.
    """

    action: str
    """One of :data:`AUTH_ACTIONS`."""
    name: str = ""
    """The user (user_* actions)."""
    role: str = ""
    password_hash: str = field(default="", repr=False)
    perm: int = 0
    """role_grant: a PermType."""
    key: bytes = b""
    range_end: bytes | None = None
    secret: bytes = field(default=b"", repr=False)
    timestamp: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Authorized:
    """A client's write with the user it came from (None: no user signed in).

    The store checks the user's permissions again when it applies the
    entry, against the auth state at that point of the log (``auth.py``).
    Built by the node, never sent by a client. The timestamp is the inner
    command's.
    """

    user: str | None
    command: Write | Session | AuthChange

    @property
    def timestamp(self) -> int:
        return self.command.timestamp


Command = Write | Session | AuthChange | Authorized
"""What a normal log entry carries."""
