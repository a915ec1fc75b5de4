"""The one error hierarchy of quorumkv, shared by server and client.

Every error has a stable ``code`` (a short snake_case string) that travels on
the wire, so a client raises the same class the server raised. Errors are
grouped by whose fault they are and what the caller may do about it::

    QuorumKVError
     ├── RequestError                the request itself is wrong; do not retry
     │    ├── InvalidArgument        wrong type, malformed field, unknown command
     │    │    └── SeqTooOld          a retried write older than its client's window
     │    ├── KeyTooLarge
     │    ├── ValueTooLarge
     │    ├── Compacted              asked for history older than compaction
     │    ├── LeaseNotFound          no lease with that id (never granted, or revoked)
     │    └── AuthError              users, roles and tokens (docs/security.md)
     │         ├── Unauthenticated   auth is on and the request names no user
     │         ├── InvalidCredentials  wrong user name or password
     │         ├── InvalidToken      forged, expired or revoked: sign in again
     │         ├── PermissionDenied  the user's roles do not grant it
     │         ├── AuthNotEnabled
     │         ├── TooManyLoginAttempts  failed sign-ins are rate-limited
     │         ├── UserNotFound / RoleNotFound / AlreadyExists
     │         └── RootMissing       auth enable needs user root with role root
     ├── UnavailableError            the cluster cannot serve it now; may retry
     │    ├── NotLeader              carries a hint of who the leader is
     │    ├── ProposalDropped        the proposal never entered the log
     │    ├── LeadershipTransferInProgress
     │    ├── Timeout                outcome unknown: the write may have happened
     │    │    └── QuorumNotReached   a majority did not confirm in time
     │    ├── NetworkError
     │    ├── WatchCanceled          a watch ended by the node (too slow a reader)
     │    └── ResourceExhausted      a node limit is reached (connections, watches)
     │         └── RateLimited        requests faster than the node's rate limit
     ├── ConsistencyError            the requested consistency could not be met
     │    ├── ReplicaReadFailed
     │    ├── ReplicaWriteFailed     the write IS committed; not every voter applied
     │    └── InconsistentData       replicas disagree: an integrity alarm
     ├── MembershipError
     │    ├── ClusterFull
     │    ├── InvalidNode
     │    ├── ConfChangeInProgress   one membership change at a time
     │    ├── LearnerNotReady        a learner too far behind to become a voter
     │    └── AuthenticationFailed   wrong cluster token
     ├── StorageError                local disk state is unusable
     │    ├── CorruptLog             names the file and offset
     │    ├── CorruptSnapshot        a damaged or foreign snapshot file
     │    └── DataDirError           missing, foreign or inconsistent data directory
     ├── ProtocolError               a peer or client sent bytes we cannot decode
     │    └── MessageTooLarge        a frame above the size limit
     └── NotBuiltYet                 a documented capability that does not exist yet

Errors raised locally and errors decoded from a remote peer are told apart by
``remote``: a client that re-raises a server's error sets it to ``True``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class QuorumKVError(Exception):
    """Base of every error quorumkv raises on purpose."""

    code: ClassVar[str] = "error"

    def __init__(self, message: str = "", *, remote: bool = False, **details: Any) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        self.remote = remote
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


class RequestError(QuorumKVError):
    code = "request_error"


class InvalidArgument(RequestError):
    code = "invalid_argument"


class SeqTooOld(InvalidArgument):
    """A retry of a write so old that its outcome is no longer recorded: it may have applied."""

    code = "seq_too_old"


class KeyTooLarge(RequestError):
    code = "key_too_large"


class ValueTooLarge(RequestError):
    code = "value_too_large"


class Compacted(RequestError):
    code = "compacted"

    def __init__(self, message: str = "", *, compact_revision: int = 0, **kw: Any) -> None:
        super().__init__(message or f"revision compacted (compact revision {compact_revision})",
                         compact_revision=compact_revision, **kw)
        self.compact_revision = compact_revision


class LeaseNotFound(RequestError):
    """A lease id that is not granted: never granted, or already revoked."""

    code = "lease_not_found"


class UnavailableError(QuorumKVError):
    code = "unavailable"


class NotLeader(UnavailableError):
    code = "not_leader"

    def __init__(self, message: str = "", *, leader: int | None = None, **kw: Any) -> None:
        super().__init__(message or f"not the leader (leader hint: {leader})", leader=leader, **kw)
        self.leader = leader


class ProposalDropped(UnavailableError):
    code = "proposal_dropped"


class LeadershipTransferInProgress(UnavailableError):
    code = "leadership_transfer_in_progress"


class Timeout(UnavailableError):
    code = "timeout"


class QuorumNotReached(Timeout):
    """The leader could not get a majority to confirm (a write's commit, a read's index)."""

    code = "quorum_not_reached"


class NetworkError(UnavailableError):
    code = "network_error"


class WatchCanceled(UnavailableError):
    """The node ended a watch: its reader was too slow, or it was cancelled. Watch again
    from the revision after the last one received."""

    code = "watch_canceled"


class ResourceExhausted(UnavailableError):
    """A limit of the node is reached (client connections, watches): retry later, or
    elsewhere, once some are released."""

    code = "resource_exhausted"


class RateLimited(ResourceExhausted):
    """Requests came faster than the node's rate limit (max_requests_per_s): none was
    queued; send again after ``retry_after_s`` seconds."""

    code = "rate_limited"

    def __init__(self, message: str = "", *, retry_after_s: float = 0.0, **kw: Any) -> None:
        super().__init__(message or f"rate limited: retry after {retry_after_s:.3f} s",
                         retry_after_s=retry_after_s, **kw)
        self.retry_after_s = retry_after_s


class ConsistencyError(QuorumKVError):
    code = "consistency_error"


class ReplicaReadFailed(ConsistencyError):
    code = "replica_read_failed"


class ReplicaWriteFailed(ConsistencyError):
    code = "replica_write_failed"


class InconsistentData(ConsistencyError):
    code = "inconsistent_data"


class MembershipError(QuorumKVError):
    code = "membership_error"


class ClusterFull(MembershipError):
    code = "cluster_full"


class InvalidNode(MembershipError):
    code = "invalid_node"


class ConfChangeInProgress(MembershipError):
    code = "conf_change_in_progress"


class LearnerNotReady(MembershipError):
    code = "learner_not_ready"


class AuthenticationFailed(MembershipError):
    code = "authentication_failed"


class AuthError(RequestError):
    """Who the caller is, or what they may do: users, roles, tokens (docs/security.md).

    A request error: it is refused before anything happens (and a write the state
    machine refuses fails the same way on every replica), so it is never retried as is.
    """

    code = "auth_error"


class Unauthenticated(AuthError):
    """Auth is enabled and the request carries no user: sign in first."""

    code = "unauthenticated"


class InvalidCredentials(AuthError):
    """Wrong user name or password (which of the two is never said)."""

    code = "invalid_credentials"


class InvalidToken(AuthError):
    """A token that is malformed, forged, expired or revoked (its user's password changed,
    the user was deleted, auth was disabled): sign in again."""

    code = "invalid_token"


class PermissionDenied(AuthError):
    """The signed-in user's roles do not grant this operation on these keys."""

    code = "permission_denied"


class AuthNotEnabled(AuthError):
    """Signing in while auth is disabled: every request is allowed without a user."""

    code = "auth_not_enabled"


class TooManyLoginAttempts(AuthError):
    """Sign-ins for this user or from this address failed too often: wait retry_after_s."""

    code = "too_many_login_attempts"


class UserNotFound(AuthError):
    code = "user_not_found"


class RoleNotFound(AuthError):
    code = "role_not_found"


class AlreadyExists(AuthError):
    """A user or role of that name exists already."""

    code = "already_exists"


class RootMissing(AuthError):
    """Auth cannot be enabled before the user ``root`` exists with the role ``root``."""

    code = "root_missing"


class StorageError(QuorumKVError):
    code = "storage_error"


class CorruptLog(StorageError):
    code = "corrupt_log"

    def __init__(self, message: str = "", *, path: str = "", offset: int = -1, **kw: Any) -> None:
        super().__init__(message or f"corrupt log record in {path} at offset {offset}",
                         path=path, offset=offset, **kw)
        self.path = path
        self.offset = offset


class CorruptSnapshot(StorageError):
    """A snapshot file is damaged, truncated, or not a quorumkv snapshot; names the file."""

    code = "corrupt_snapshot"

    def __init__(self, message: str = "", *, path: str = "", **kw: Any) -> None:
        super().__init__(message or f"corrupt snapshot file {path}", path=path, **kw)
        self.path = path


class DataDirError(StorageError):
    code = "data_dir_error"


class ProtocolError(QuorumKVError):
    code = "protocol_error"


class MessageTooLarge(ProtocolError):
    code = "message_too_large"


class NotBuiltYet(QuorumKVError):
    code = "not_built_yet"


def _all_subclasses(cls: type[QuorumKVError]) -> list[type[QuorumKVError]]:
    out: list[type[QuorumKVError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_ALL_ERRORS: list[type[QuorumKVError]] = [QuorumKVError, *_all_subclasses(QuorumKVError)]
ERRORS_BY_CODE: dict[str, type[QuorumKVError]] = {c.code: c for c in _ALL_ERRORS}


def from_dict(payload: dict[str, Any]) -> QuorumKVError:
    """Rebuild an error received from a remote node (``remote=True``)."""
    cls = ERRORS_BY_CODE.get(str(payload.get("code", "")), QuorumKVError)
    details = payload.get("details") or {}
    if not isinstance(details, dict):
        details = {}
    err = cls.__new__(cls)
    message = str(payload.get("message", "")) or cls.__name__
    Exception.__init__(err, message)
    err.message = message
    err.remote = True
    # Details come from the network: keep them as data, never as constructor
    # arguments or attributes that could shadow ours.
    err.details = {str(k): v for k, v in details.items()}
    for k, v in err.details.items():
        if k.isidentifier() and not hasattr(err, k):
            setattr(err, k, v)
    return err
