"""Users, roles and permissions in the state machine: coverage of ranges, what each command
needs, and the checks the store makes when it applies an authorized entry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from quorumkv.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidToken,
    PermissionDenied,
    RoleNotFound,
    RootMissing,
    Unauthenticated,
    UserNotFound,
)
from quorumkv.kv import (
    ALL_KEYS,
    Applied,
    Compact,
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    KVStore,
    LeaseGrant,
    LeaseRevoke,
    Put,
    RangeRequest,
    Txn,
    decode_command,
    encode_command,
    prefix_end,
)
from quorumkv.kv.auth import ROOT_NEED, AuthView, Need, PermType, covers, needs_of
from quorumkv.kv.commands import AuthChange, Authorized, Session
from quorumkv.kv.results import AuthResult
from quorumkv.kv.validation import validate
from quorumkv.security import passwords, tokens

# -- coverage ------------------------------------------------------------------------------


def test_a_single_key_grant_covers_that_key_only() -> None:
    grants = [(b"a", b"a\0")]
    assert covers(grants, b"a", None)
    assert not covers(grants, b"b", None)
    assert not covers(grants, b"a", b"b")  # "a\0..." keys are outside


def test_adjacent_grants_cover_their_union_and_a_gap_does_not() -> None:
    grants = [(b"a", b"c"), (b"c", b"e")]
    assert covers(grants, b"a", b"e")
    assert covers(grants, b"b", b"d")
    assert not covers(grants, b"a", b"f")
    assert not covers([(b"a", b"c"), (b"d", b"e")], b"a", b"e")


def test_an_open_ended_grant_covers_everything_after_its_start() -> None:
    grants = [(b"m", None)]
    assert covers(grants, b"m", ALL_KEYS)
    assert covers(grants, b"z", None)
    assert not covers(grants, b"a", ALL_KEYS)
    assert not covers([(b"a", b"z")], b"a", ALL_KEYS)


_key = st.binary(min_size=1, max_size=2)


@given(st.lists(st.tuples(_key, _key), max_size=5), _key, _key)
def test_coverage_agrees_with_checking_every_boundary(
        raw: list[tuple[bytes, bytes]], start: bytes, end: bytes) -> None:
    grants: list[tuple[bytes, bytes | None]] = [(a, b) for a, b in raw if a < b]
    assume(end != ALL_KEYS)  # that one means "from start on", tested above
    if end <= start:
        assert covers(grants, start, end)  # an empty range needs nothing
        return
    # An uncovered part of [start, end) begins at start or at the end of a grant, so
    # checking those points alone is exact.
    points = {start} | {b for _, b in grants if b is not None}
    expected = all(any(a <= k < b for a, b in grants if b is not None)
                   for k in points if start <= k < end)
    assert covers(grants, start, end) == expected


# -- needs ---------------------------------------------------------------------------------


def test_a_txn_needs_both_branches_and_its_compares() -> None:
    txn = Txn(compares=(Compare(key=b"c", target=CompareTarget.VERSION, op=CompareOp.EQUAL,
                                value=0),),
              success=(Put(key=b"s", value=b"1"),),
              failure=(RangeRequest(key=b"f", range_end=b"g"), DeleteRange(key=b"d")))
    assert needs_of(txn) == [Need(b"c", None, False), Need(b"s", None, True),
                             Need(b"f", b"g", False), Need(b"d", None, True)]


def test_compaction_needs_root_and_a_revoke_needs_its_keys() -> None:
    assert needs_of(Compact(revision=3)) == [ROOT_NEED]
    assert needs_of(LeaseGrant(id=1, ttl=5)) == []
    assert needs_of(LeaseRevoke(id=1), [b"x", b"y"]) == [Need(b"x", None, True),
                                                         Need(b"y", None, True)]


# -- the store ------------------------------------------------------------------------------


class Log:
    """One store fed entries in order, as a server would."""

    def __init__(self, store: KVStore) -> None:
        self.store = store
        self.index = 0

    def apply(self, cmd: object) -> Applied:
        decoded = decode_command(encode_command(cmd))  # type: ignore[arg-type]
        self.index += 1
        return self.store.apply(self.index, 1, decoded)

    def change(self, action: str, **kw: object) -> Applied:
        return self.apply(AuthChange(action=action, **kw))  # type: ignore[arg-type]

    def as_user(self, user: str | None, cmd: object) -> Applied:
        return self.apply(Authorized(user=user, command=cmd))  # type: ignore[arg-type]


@pytest.fixture
def log() -> Iterator[Log]:
    with KVStore.open_temporary() as store:
        yield Log(store)


def _enable_with_reader(log: Log) -> None:
    log.change("user_add", name="root", password_hash="h")
    log.change("role_add", role="root")
    log.change("user_grant_role", name="root", role="root")
    log.change("user_add", name="alice", password_hash="h")
    log.change("role_add", role="app-reader")
    log.change("role_grant", role="app-reader", perm=int(PermType.READ), key=b"app/",
               range_end=prefix_end(b"app/"))
    log.change("role_add", role="app-writer")
    log.change("role_grant", role="app-writer", perm=int(PermType.WRITE), key=b"app/w/",
               range_end=prefix_end(b"app/w/"))
    log.change("user_grant_role", name="alice", role="app-reader")
    log.change("user_grant_role", name="alice", role="app-writer")
    log.change("enable", secret=b"s" * 32)


def test_enable_needs_root_with_the_root_role(log: Log) -> None:
    with pytest.raises(RootMissing):
        log.change("enable", secret=b"k")
    log.change("user_add", name="root", password_hash="h")
    with pytest.raises(RootMissing):
        log.change("enable", secret=b"k")
    log.change("role_add", role="root")
    log.change("user_grant_role", name="root", role="root")
    applied = log.change("enable", secret=b"k")
    assert isinstance(applied.result, AuthResult)
    view = log.store.auth_view()
    assert view.enabled and view.settings.secret == b"k"
    assert view.settings.revision == applied.result.auth_revision == 4


def test_admin_errors_are_specific(log: Log) -> None:
    log.change("user_add", name="bob", password_hash="h")
    with pytest.raises(AlreadyExists):
        log.change("user_add", name="bob", password_hash="h")
    with pytest.raises(UserNotFound):
        log.change("user_delete", name="nobody")
    with pytest.raises(RoleNotFound):
        log.change("user_grant_role", name="bob", role="nope")
    with pytest.raises(RoleNotFound):
        log.change("role_grant", role="nope", perm=0, key=b"k")
    log.change("role_add", role="r")
    with pytest.raises(InvalidArgument):
        log.change("role_revoke", role="r", key=b"k")


def test_a_write_applies_only_within_the_users_grants(log: Log) -> None:
    _enable_with_reader(log)
    assert log.as_user("alice", Put(key=b"app/w/1", value=b"v")).result is not None
    for cmd in (Put(key=b"app/x", value=b"v"), DeleteRange(key=b"app/", range_end=b"app0"),
                Compact(revision=1)):
        with pytest.raises(PermissionDenied):
            log.as_user("alice", cmd)
    assert log.store.get(b"app/x") is None
    with pytest.raises(Unauthenticated):
        log.as_user(None, Put(key=b"app/w/2", value=b"v"))
    assert log.as_user("root", Put(key=b"anything", value=b"v")).result is not None


def test_a_txn_is_denied_when_its_untaken_branch_is_outside_the_grant(log: Log) -> None:
    _enable_with_reader(log)
    txn = Txn(compares=(Compare(key=b"app/c", target=CompareTarget.VERSION, op=CompareOp.EQUAL,
                                value=0),),
              success=(Put(key=b"app/w/ok", value=b"1"),),
              failure=(Put(key=b"secret", value=b"1"),))
    with pytest.raises(PermissionDenied):
        log.as_user("alice", txn)
    assert log.store.get(b"app/w/ok") is None


def test_a_revoked_permission_denies_a_write_applied_after_it(log: Log) -> None:
    _enable_with_reader(log)
    log.change("role_revoke", role="app-writer", key=b"app/w/", range_end=prefix_end(b"app/w/"))
    with pytest.raises(PermissionDenied):
        log.as_user("alice", Put(key=b"app/w/1", value=b"v"))
    log.change("user_delete", name="alice")
    with pytest.raises(PermissionDenied):
        log.as_user("alice", Put(key=b"app/w/1", value=b"v"))


def test_lease_revoke_needs_write_on_every_attached_key(log: Log) -> None:
    _enable_with_reader(log)
    log.as_user("alice", LeaseGrant(id=7, ttl=60))
    log.as_user("root", Put(key=b"outside", value=b"v", lease=7))
    with pytest.raises(PermissionDenied):
        log.as_user("alice", LeaseRevoke(id=7))
    assert log.store.lease_exists(7)
    log.as_user("root", LeaseRevoke(id=7))
    assert not log.store.lease_exists(7)


def test_auth_changes_need_root_once_enabled_and_root_cannot_be_locked_out(log: Log) -> None:
    _enable_with_reader(log)
    with pytest.raises(PermissionDenied):
        log.as_user("alice", AuthChange(action="user_add", name="eve", password_hash="h"))
    with pytest.raises(Unauthenticated):
        log.as_user(None, AuthChange(action="disable"))
    with pytest.raises(InvalidArgument):
        log.as_user("root", AuthChange(action="user_delete", name="root"))
    with pytest.raises(InvalidArgument):
        log.as_user("root", AuthChange(action="user_revoke_role", name="root", role="root"))
    log.as_user("root", AuthChange(action="disable"))
    assert not log.store.auth_view().enabled
    assert log.store.auth_view().settings.secret == b""  # every token dies with it


def test_password_change_and_role_loss_move_the_generation(log: Log) -> None:
    _enable_with_reader(log)
    gen = log.store.auth_view().users["alice"].generation
    log.change("user_passwd", name="alice", password_hash="h2")
    log.change("user_revoke_role", name="alice", role="app-writer")
    assert log.store.auth_view().users["alice"].generation == gen + 2


def test_role_delete_removes_it_from_users(log: Log) -> None:
    _enable_with_reader(log)
    log.change("role_delete", role="app-reader")
    assert log.store.auth_view().users["alice"].roles == ("app-writer",)


def test_auth_state_survives_reopen_and_snapshot_and_enters_the_digest(tmp_path: Path) -> None:
    with KVStore.open(tmp_path / "a") as store:
        log = Log(store)
        before = store.digest()
        _enable_with_reader(log)
        assert store.digest() != before
        store.snapshot_to(tmp_path / "snap")
        digest = store.digest()
    with KVStore.open(tmp_path / "a") as again:
        assert again.auth_view().users["alice"].roles == ("app-reader", "app-writer")
        assert again.digest() == digest
    with KVStore.open(tmp_path / "b") as other:
        other.restore_from(tmp_path / "snap")
        assert other.auth_view().enabled
        assert other.digest() == digest


def test_clients_cannot_send_auth_entries_as_writes() -> None:
    for cmd in (AuthChange(action="enable", secret=b"mine"),
                Authorized(user="root", command=Put(key=b"k", value=b"v"))):
        with pytest.raises(InvalidArgument):
            validate(cmd)
    with pytest.raises(InvalidArgument):
        encode_command(AuthChange(action="disable"), client_id=1, seq=1)
    bad = Session(client_id=1, seq=1, command=AuthChange(action="disable"))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        validate(bad)


def test_authorized_entries_round_trip_through_the_log_encoding() -> None:
    cmd = Put(key=b"k", value=b"v")
    for user in ("alice", None):
        data = encode_command(cmd, client_id=3, seq=4, user=user)
        decoded = decode_command(data)
        assert isinstance(decoded, Authorized) and decoded.user == user
        assert isinstance(decoded.command, Session) and decoded.command.command == cmd


# -- passwords and tokens ---------------------------------------------------------------


def test_passwords_hash_with_salt_and_check() -> None:
    a, b = passwords.hash_password("pw"), passwords.hash_password("pw")
    assert a != b and a.startswith("scrypt$")
    assert passwords.check_password("pw", a)
    assert not passwords.check_password("pW", a)
    assert not passwords.check_password("pw", "")
    assert not passwords.check_password("pw", "scrypt$x$y")


def test_tokens_verify_and_refuse_forgery_and_expiry() -> None:
    secret = b"k" * 32
    token = tokens.sign(secret, tokens.Claims("alice", 2, 10_000))
    assert tokens.verify(secret, token, now_ms=9_999) == tokens.Claims("alice", 2, 10_000)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(secret, token, now_ms=10_000)
    with pytest.raises(InvalidToken):
        tokens.verify(b"other" * 8, token, now_ms=0)
    _body, mac = token.rsplit(".", 1)
    forged = tokens.sign(b"x" * 32, tokens.Claims("root", 2, 10_000)).rsplit(".", 1)[0] + "." + mac
    with pytest.raises(InvalidToken):
        tokens.verify(secret, forged, now_ms=0)
    for junk in ("", "qkv1.", "qkv1.a.b", "qkv1.!!.??", token + "x"):
        with pytest.raises(InvalidToken):
            tokens.verify(secret, junk, now_ms=0)
    with pytest.raises(InvalidToken):
        tokens.verify(b"", token, now_ms=0)


def test_names_are_bounded_in_bytes_so_no_entry_can_break_the_store(log: Log) -> None:
    wide = "\U0001f600" * 128  # 128 characters, 512 bytes: more than an LMDB key holds
    for change in (AuthChange(action="user_add", name=wide, password_hash="h"),
                   AuthChange(action="role_add", role=wide),
                   AuthChange(action="user_add", name="\ud800", password_hash="h")):
        with pytest.raises(InvalidArgument):
            log.apply(change)
    # Even a committed entry that slipped past the checks fails alone, on every replica.
    log.index += 1
    bad = Authorized(user=None, command=AuthChange(action="role_add", role=wide))
    with pytest.raises(InvalidArgument):
        log.store.apply(log.index, 1, bad)
    log.change("role_add", role="\U0001f600" * 63)  # 252 bytes: fine
    assert "\U0001f600" * 63 in log.store.auth_view().roles


def _views_read_during_a_restore(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 *, read_before: bool) -> list[AuthView]:
    """Restore a snapshot with auth enabled into a store without it, reading the auth view
    while the restore has the store closed (as a request arriving then would: every
    request reads it). Returns the views read then, the view read before the restore
    first if ``read_before``."""
    with KVStore.open(tmp_path / "src") as source:
        _enable_with_reader(Log(source))
        source.snapshot_to(tmp_path / "snap")
    with KVStore.open(tmp_path / "dst") as store:
        seen = [store.auth_view()] if read_before else []
        real_replace = Path.replace

        def replace_while_reading(self: Path, target: Path) -> Path:
            seen.append(store.auth_view())  # inside restore_from: the store is closed
            return real_replace(self, target)

        monkeypatch.setattr(Path, "replace", replace_while_reading)
        store.restore_from(tmp_path / "snap")
        monkeypatch.undo()
        assert store.auth_view().enabled  # the restored users, once it is open again
    return seen


def test_readers_keep_the_auth_view_while_a_snapshot_is_restored(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before, during = _views_read_during_a_restore(tmp_path, monkeypatch,
                                                       read_before=True)
    assert not before.enabled
    assert during == before


def test_readers_get_an_auth_view_during_a_restore_even_if_none_was_read_before(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A member that joins and is sent a snapshot at once may be asked for the view
    # (its first HTTP request) only while the restore has the store closed.
    [during] = _views_read_during_a_restore(tmp_path, monkeypatch, read_before=False)
    assert not during.enabled
