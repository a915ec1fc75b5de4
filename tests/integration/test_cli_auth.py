"""``quorumkv user``, ``role`` and ``auth``, and ``--user``/``--password`` on every client
command, as real processes against one real three-node cluster.

One test runs the steps in order on its own cluster (auth is off, then enabled, then
used, then disabled again): steps of one flow, they must not be spread over pytest-xdist
workers. Each process is run by subprocess.run, which kills it by pid if it overruns.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_results import as_json, failed, ok
from cluster_harness import Cluster, running_cluster

pytestmark = pytest.mark.timeout(300)

CLI_TIMEOUT = 60.0
ROOT_PW = "root-secret"
ALICE_PW = "alice-secret"
ROOT = f"root:{ROOT_PW}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("cli-auth")) as c:
        c.leader_name()
        yield c


def cli(c: Cluster, *args: str, before: tuple[str, ...] = (), stdin: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``quorumkv [before...] args... --endpoints ...`` with the credential variables unset
    unless ``env`` gives them."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("QUORUMKV_USER", "QUORUMKV_PASSWORD", "QUORUMKV_ENDPOINTS")}
    return subprocess.run([sys.executable, "-m", "quorumkv.cli", *before, *args,
                           "--endpoints", ",".join(c.endpoints)],
                          input=stdin if stdin is not None else "", capture_output=True,
                          text=True, timeout=CLI_TIMEOUT, check=False,
                          env={**base, **(env or {})})


def _enable_needs_the_user_root(cluster: Cluster) -> None:
    failed(cli(cluster, "auth", "enable"), "root_missing")
    assert as_json(cli(cluster, "auth", "status", "--json"))["enabled"] is False


def _users_and_roles_then_auth_enable(cluster: Cluster) -> None:
    assert ok(cli(cluster, "user", "add", "root", "--password", ROOT_PW)) == "User root added\n"
    doc = as_json(cli(cluster, "user", "add", "alice", "--password-stdin", "--json",
                      stdin=f"{ALICE_PW}\n"))
    assert doc["user"] == "alice" and doc["auth_revision"] > 0
    # Not given, the password is asked for twice (here from a pipe).
    ok(cli(cluster, "user", "add", "bob", stdin="bob-pw\nbob-pw\n"))
    assert ok(cli(cluster, "role", "add", "app")) == "Role app created\n"
    ok(cli(cluster, "role", "grant", "app", "readwrite", "app/", "--prefix"))
    ok(cli(cluster, "role", "grant", "app", "read", "logs/", "--from-key"))
    ok(cli(cluster, "role", "grant", "app", "read", "cfg/a", "cfg/m"))
    ok(cli(cluster, "user", "grant-role", "alice", "app"))
    # etcdctl's way: the role root is made and given to the user root on the way.
    assert ok(cli(cluster, "auth", "enable")) == "Authentication Enabled\n"
    status = as_json(cli(cluster, "auth", "status", "--json", "--user", ROOT))
    assert status["enabled"] is True and status["user"] == "root"


def _without_a_user_requests_are_refused(cluster: Cluster) -> None:
    err = failed(cli(cluster, "get", "app/x"), "unauthenticated")
    assert "sign in" in err
    failed(cli(cluster, "put", "app/x", "v"), "unauthenticated")
    failed(cli(cluster, "user", "list"), "unauthenticated")


def _user_option_anywhere(cluster: Cluster) -> None:
    assert "OK" in ok(cli(cluster, "put", "app/x", "hello", "--user", ROOT))
    assert ok(cli(cluster, "get", "app/x", before=("--user", "root", "--password", ROOT_PW))
              ) == "hello\n"
    assert ok(cli(cluster, "get", "app/x", "--user", "root", "--password", ROOT_PW)
              ) == "hello\n"
    assert ok(cli(cluster, "get", "app/x",
                  env={"QUORUMKV_USER": "alice", "QUORUMKV_PASSWORD": ALICE_PW})) == "hello\n"
    # After the command wins over the environment.
    failed(cli(cluster, "get", "app/x", "--user", "alice:wrong",
               env={"QUORUMKV_USER": "alice", "QUORUMKV_PASSWORD": ALICE_PW}),
           "invalid_credentials")
    # A name without a password, and no terminal to ask on: a usage error, no hang.
    no_password = cli(cluster, "get", "app/x", "--user", "root")
    assert no_password.returncode == 2, no_password
    assert "no password for user 'root'" in no_password.stderr
    assert ROOT_PW not in no_password.stderr


def _a_role_limits_what_its_user_may_do(cluster: Cluster) -> None:
    alice = ("--user", f"alice:{ALICE_PW}")
    for key in ("logs/2024", "cfg/b"):
        ok(cli(cluster, "put", key, "v", "--user", ROOT))
    ok(cli(cluster, "put", "app/y", "1", *alice))
    ok(cli(cluster, "get", "logs/2024", *alice))
    ok(cli(cluster, "get", "cfg/b", *alice))
    failed(cli(cluster, "put", "logs/2024", "x", *alice), "permission_denied")
    failed(cli(cluster, "get", "cfg/z", *alice), "permission_denied")
    # (Every key after "logs/" is readable: --from-key.)
    failed(cli(cluster, "get", "abc/x", *alice), "permission_denied")
    failed(cli(cluster, "user", "list", *alice), "permission_denied")


def _listing_and_showing_users_and_roles(cluster: Cluster) -> None:
    assert ok(cli(cluster, "user", "list", "--user", ROOT)).split() == ["alice", "bob", "root"]
    assert as_json(cli(cluster, "user", "list", "--json", "--user", ROOT)) == {
        "users": ["alice", "bob", "root"]}
    assert ok(cli(cluster, "user", "get", "alice", "--user", ROOT)
              ) == "User: alice\nRoles: app\n"
    assert as_json(cli(cluster, "user", "get", "root", "--json", "--user", ROOT)
                   ) == {"name": "root", "roles": ["root"]}
    assert ok(cli(cluster, "role", "list", "--user", ROOT)).split() == ["app", "root"]
    assert as_json(cli(cluster, "role", "list", "--json", "--user", ROOT)) == {
        "roles": ["app", "root"]}
    shown = ok(cli(cluster, "role", "get", "app", "--user", ROOT))
    assert shown.startswith("Role app\nKV Read:\n"), shown
    assert "\t[app/, app0)\n" in shown and "\t[logs/, <end>) (from key)\n" in shown
    assert "\t[cfg/a, cfg/m)\n" in shown
    role = as_json(cli(cluster, "role", "get", "app", "--json", "--user", ROOT))
    assert role["name"] == "app" and role["all_keys"] is False
    assert {"type": "readwrite", "key": "app/", "range_end": "app0"} in role["permissions"]
    assert {"type": "read", "key": "logs/", "range_end": "\u0000"} in role["permissions"]
    assert as_json(cli(cluster, "role", "get", "root", "--json", "--user", ROOT)
                   )["all_keys"] is True
    failed(cli(cluster, "user", "get", "nobody", "--user", ROOT), "user_not_found")
    failed(cli(cluster, "role", "get", "nothing", "--user", ROOT), "role_not_found")


def _changes_and_auth_disable(cluster: Cluster) -> None:
    ok(cli(cluster, "role", "revoke", "app", "logs/", "--from-key", "--user", ROOT))
    role = as_json(cli(cluster, "role", "get", "app", "--json", "--user", ROOT))
    assert all(p["key"] != "logs/" for p in role["permissions"])
    # The signed-in user's password before the command, the new one after it.
    ok(cli(cluster, "user", "passwd", "alice", "--password", "alice-new", before=("--user", ROOT)))
    failed(cli(cluster, "get", "app/x", "--user", f"alice:{ALICE_PW}"), "invalid_credentials")
    assert ok(cli(cluster, "get", "app/x", "--user", "alice:alice-new")) == "hello\n"
    ok(cli(cluster, "user", "revoke-role", "alice", "app", "--user", ROOT))
    failed(cli(cluster, "get", "app/x", "--user", "alice:alice-new"), "permission_denied")
    ok(cli(cluster, "user", "delete", "bob", "--user", ROOT))
    ok(cli(cluster, "role", "delete", "app", "--user", ROOT))
    assert ok(cli(cluster, "auth", "disable", "--user", ROOT)) == "Authentication Disabled\n"
    assert ok(cli(cluster, "get", "app/x")) == "hello\n"
    assert as_json(cli(cluster, "auth", "status", "--json"))["enabled"] is False


def test_the_auth_commands_end_to_end(cluster: Cluster) -> None:
    steps = [_enable_needs_the_user_root, _users_and_roles_then_auth_enable,
             _without_a_user_requests_are_refused, _user_option_anywhere,
             _a_role_limits_what_its_user_may_do, _listing_and_showing_users_and_roles,
             _changes_and_auth_disable]
    for step in steps:
        step(cluster)
