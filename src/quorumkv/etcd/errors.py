"""Errors on the etcd port: etcd's own status codes and texts, and quorumkv's errors as them.

etcd's clients recognise an error by its gRPC status code *and* its exact
message (clientv3's ``rpctypes.Error`` looks the text up in a table; etcdctl
prints it; clientv3 retries ``Unavailable`` ones such as "etcdserver: no
leader"), so both must be etcd's, character for character. The constants
below are etcd's server-side errors (api/v3rpc/rpctypes/error.go);
:data:`BY_CLASS` says which one each of quorumkv's errors (quorumkv.errors)
becomes, by its nearest class. A handler that must answer with an error only
etcd's API has (an empty key, a value given with ``ignore_value``) raises
:class:`EtcdError` with the constant.

Anything else that escapes a handler is a bug: it is logged with its traceback
here and the client gets ``Unknown`` with a one-line message, never the
traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import grpc

from quorumkv import errors as qe

log = logging.getLogger(__name__)

Code = grpc.StatusCode


@dataclass(frozen=True, slots=True)
class RpcError:
    """A gRPC status: its code and its message (etcd's exact text)."""

    code: grpc.StatusCode
    message: str


class EtcdError(Exception):
    """An answer that only etcd's API has, raised by a handler as one of the constants."""

    def __init__(self, error: RpcError) -> None:
        super().__init__(error.message)
        self.error = error


# -- etcd's server-side errors (rpctypes) --------------------------------------------

EMPTY_KEY: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: key is not provided")
KEY_NOT_FOUND: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: key not found")
VALUE_PROVIDED: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: value is provided")
LEASE_PROVIDED: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: lease is provided")
TTL_ZERO: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: ttl is 0")
TOO_MANY_OPS: Final = RpcError(Code.INVALID_ARGUMENT,
                               "etcdserver: too many operations in txn request")
DUPLICATE_KEY: Final = RpcError(Code.INVALID_ARGUMENT,
                                "etcdserver: duplicate key given in txn request")
COMPACTED: Final = RpcError(Code.OUT_OF_RANGE,
                            "etcdserver: mvcc: required revision has been compacted")
FUTURE_REV: Final = RpcError(Code.OUT_OF_RANGE,
                             "etcdserver: mvcc: required revision is a future revision")
NO_SPACE: Final = RpcError(Code.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded")

LEASE_NOT_FOUND: Final = RpcError(Code.NOT_FOUND, "etcdserver: requested lease not found")
LEASE_EXIST: Final = RpcError(Code.FAILED_PRECONDITION, "etcdserver: lease already exists")
LEASE_TTL_TOO_LARGE: Final = RpcError(Code.OUT_OF_RANGE, "etcdserver: too large lease TTL")

MEMBER_EXIST: Final = RpcError(Code.FAILED_PRECONDITION, "etcdserver: member ID already exist")
PEER_URL_EXIST: Final = RpcError(Code.FAILED_PRECONDITION,
                                 "etcdserver: Peer URLs already exists")
MEMBER_NOT_ENOUGH_STARTED: Final = RpcError(
    Code.FAILED_PRECONDITION,
    "etcdserver: re-configuration failed due to not enough started members")
MEMBER_BAD_URLS: Final = RpcError(Code.INVALID_ARGUMENT,
                                  "etcdserver: given member URLs are invalid")
MEMBER_NOT_FOUND: Final = RpcError(Code.NOT_FOUND, "etcdserver: member not found")
MEMBER_NOT_LEARNER: Final = RpcError(Code.FAILED_PRECONDITION,
                                     "etcdserver: can only promote a learner member")
LEARNER_NOT_READY: Final = RpcError(
    Code.FAILED_PRECONDITION,
    "etcdserver: can only promote a learner member which is in sync with leader")
TOO_MANY_LEARNERS: Final = RpcError(Code.FAILED_PRECONDITION,
                                    "etcdserver: too many learner members in cluster")

REQUEST_TOO_LARGE: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: request is too large")
TOO_MANY_REQUESTS: Final = RpcError(Code.RESOURCE_EXHAUSTED, "etcdserver: too many requests")

ROOT_USER_NOT_EXIST: Final = RpcError(Code.FAILED_PRECONDITION,
                                      "etcdserver: root user does not exist")
ROOT_ROLE_NOT_EXIST: Final = RpcError(Code.FAILED_PRECONDITION,
                                      "etcdserver: root user does not have root role")
USER_ALREADY_EXIST: Final = RpcError(Code.FAILED_PRECONDITION,
                                     "etcdserver: user name already exists")
USER_EMPTY: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: user name is empty")
USER_NOT_FOUND: Final = RpcError(Code.FAILED_PRECONDITION, "etcdserver: user name not found")
ROLE_ALREADY_EXIST: Final = RpcError(Code.FAILED_PRECONDITION,
                                     "etcdserver: role name already exists")
ROLE_NOT_FOUND: Final = RpcError(Code.FAILED_PRECONDITION, "etcdserver: role name not found")
ROLE_EMPTY: Final = RpcError(Code.INVALID_ARGUMENT, "etcdserver: role name is empty")
AUTH_FAILED: Final = RpcError(Code.INVALID_ARGUMENT,
                              "etcdserver: authentication failed, invalid user ID or password")
PERMISSION_DENIED: Final = RpcError(Code.PERMISSION_DENIED, "etcdserver: permission denied")
ROLE_NOT_GRANTED: Final = RpcError(Code.FAILED_PRECONDITION,
                                   "etcdserver: role is not granted to the user")
PERMISSION_NOT_GRANTED: Final = RpcError(Code.FAILED_PRECONDITION,
                                         "etcdserver: permission is not granted to the role")
AUTH_NOT_ENABLED: Final = RpcError(Code.FAILED_PRECONDITION,
                                   "etcdserver: authentication is not enabled")
INVALID_AUTH_TOKEN: Final = RpcError(Code.UNAUTHENTICATED, "etcdserver: invalid auth token")
INVALID_AUTH_MGMT: Final = RpcError(Code.INVALID_ARGUMENT,
                                    "etcdserver: invalid auth management")

NO_LEADER: Final = RpcError(Code.UNAVAILABLE, "etcdserver: no leader")
NOT_LEADER: Final = RpcError(Code.FAILED_PRECONDITION, "etcdserver: not leader")
LEADER_CHANGED: Final = RpcError(Code.UNAVAILABLE, "etcdserver: leader changed")
NOT_CAPABLE: Final = RpcError(Code.UNAVAILABLE, "etcdserver: not capable")
STOPPED: Final = RpcError(Code.UNAVAILABLE, "etcdserver: server stopped")
TIMEOUT: Final = RpcError(Code.UNAVAILABLE, "etcdserver: request timed out")
TIMEOUT_DUE_TO_LEADER_FAIL: Final = RpcError(
    Code.UNAVAILABLE, "etcdserver: request timed out, possibly due to previous leader failure")
TIMEOUT_DUE_TO_CONNECTION_LOST: Final = RpcError(
    Code.UNAVAILABLE, "etcdserver: request timed out, possibly due to connection lost")
UNHEALTHY: Final = RpcError(Code.UNAVAILABLE, "etcdserver: unhealthy cluster")
CORRUPT: Final = RpcError(Code.DATA_LOSS, "etcdserver: corrupt cluster")
NOT_SUPPORTED_FOR_LEARNER: Final = RpcError(Code.UNAVAILABLE,
                                            "etcdserver: rpc not supported for learner")
BAD_LEADER_TRANSFEREE: Final = RpcError(Code.FAILED_PRECONDITION,
                                        "etcdserver: bad leader transferee")

NESTED_TXN: Final = RpcError(Code.UNIMPLEMENTED,
                             "quorumkv: a txn inside a txn (request_txn) is not supported")
"""Not etcd's: etcd runs nested transactions, quorumkv's state machine has none."""
INTERNAL: Final = RpcError(Code.UNKNOWN, "quorumkv: unexpected server error (see the member's "
                                         "log)")


# -- quorumkv's errors as etcd's ------------------------------------------------------

OWN_MESSAGE: Final = ""
"""As a message in BY_CLASS: the error's own message, with the code given."""

BY_CLASS: Final[dict[type[qe.QuorumKVError], RpcError]] = {
    qe.QuorumKVError: RpcError(Code.UNKNOWN, OWN_MESSAGE),
    qe.RequestError: RpcError(Code.INVALID_ARGUMENT, OWN_MESSAGE),
    qe.InvalidArgument: RpcError(Code.INVALID_ARGUMENT, OWN_MESSAGE),
    # etcd has no key or value size limit of its own, only the request's size.
    qe.KeyTooLarge: REQUEST_TOO_LARGE,
    qe.ValueTooLarge: REQUEST_TOO_LARGE,
    qe.MessageTooLarge: REQUEST_TOO_LARGE,
    qe.Compacted: COMPACTED,
    qe.LeaseNotFound: LEASE_NOT_FOUND,
    # With auth on, etcd answers a request that names nobody with "user name is empty".
    qe.Unauthenticated: USER_EMPTY,
    qe.InvalidCredentials: AUTH_FAILED,
    qe.InvalidToken: INVALID_AUTH_TOKEN,
    qe.PermissionDenied: PERMISSION_DENIED,
    qe.AuthNotEnabled: AUTH_NOT_ENABLED,
    qe.TooManyLoginAttempts: TOO_MANY_REQUESTS,
    qe.UserNotFound: USER_NOT_FOUND,
    qe.RoleNotFound: ROLE_NOT_FOUND,
    qe.AlreadyExists: USER_ALREADY_EXIST,  # a role's: see _refine
    qe.RootMissing: ROOT_USER_NOT_EXIST,
    qe.AuthError: PERMISSION_DENIED,
    # Forwarding found no leader to send a write to, within the request timeout.
    qe.NotLeader: NO_LEADER,
    qe.ProposalDropped: LEADER_CHANGED,
    qe.LeadershipTransferInProgress: LEADER_CHANGED,
    qe.Timeout: TIMEOUT,
    qe.QuorumNotReached: TIMEOUT,
    qe.NetworkError: TIMEOUT_DUE_TO_CONNECTION_LOST,
    qe.ResourceExhausted: TOO_MANY_REQUESTS,
    qe.UnavailableError: RpcError(Code.UNAVAILABLE, OWN_MESSAGE),
    qe.ReplicaReadFailed: UNHEALTHY,
    qe.ReplicaWriteFailed: UNHEALTHY,
    qe.InconsistentData: CORRUPT,
    qe.ConsistencyError: UNHEALTHY,
    qe.LearnerNotReady: LEARNER_NOT_READY,
    qe.AuthenticationFailed: PERMISSION_DENIED,
    qe.MembershipError: RpcError(Code.FAILED_PRECONDITION, OWN_MESSAGE),
    qe.StorageError: STOPPED,
    qe.CorruptLog: CORRUPT,
    qe.CorruptSnapshot: CORRUPT,
    qe.ProtocolError: TIMEOUT_DUE_TO_CONNECTION_LOST,
    qe.NotBuiltYet: RpcError(Code.UNIMPLEMENTED, OWN_MESSAGE),
}


def _refine(err: qe.QuorumKVError, found: RpcError) -> RpcError:
    """Where one quorumkv class stands for several of etcd's errors, its text decides.

    The store's checks (kv/reads.py, kv/applier.py, kv/validation.py) raise
    InvalidArgument with these texts for what etcd answers with errors of its own.
    """
    if isinstance(err, qe.InvalidArgument):
        if err.message.startswith("future revision"):
            return FUTURE_REV
        if err.message == "duplicate key given in txn request":
            return DUPLICATE_KEY
    if isinstance(err, qe.AlreadyExists) and "role" in err.details:
        return ROLE_ALREADY_EXIST
    return found


def status_of(err: BaseException) -> RpcError:
    """The gRPC status a handler's exception is answered with (logging it if it is a bug)."""
    if isinstance(err, EtcdError):
        return err.error
    if isinstance(err, qe.QuorumKVError):
        for cls in type(err).__mro__:
            found = BY_CLASS.get(cls)
            if found is not None:
                found = _refine(err, found)
                return RpcError(found.code, found.message or err.message)
    log.error("etcd API: unexpected error answered as Unknown", exc_info=err)
    return INTERNAL
