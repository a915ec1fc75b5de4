"""Transport security on real processes: client and HTTP ports over TLS, peers over mTLS.

Certificates come from ``quorumkv.security.certs`` (what ``quorumkv certs``
runs), issued for 127.0.0.1, so clients verify host names as they would in
production. Every process is started by the test and stopped by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Cluster, NodeProcess, running_cluster, wait_until
from cryptography import x509

from quorumkv.client import Client, TLSSettings
from quorumkv.client.auth_wire import AuthRequest
from quorumkv.client.connection import Connection
from quorumkv.client.endpoints import parse_endpoint
from quorumkv.client.protocol import ReadRequest, Request, WriteRequest
from quorumkv.errors import NetworkError, PermissionDenied, QuorumKVError
from quorumkv.kv import Put, RangeRequest
from quorumkv.security import certs

pytestmark = pytest.mark.timeout(600)

LOCAL = ["127.0.0.1"]
TLS_RELOAD_S = 0.2


def make_ca(directory: Path, *names: str) -> Path:
    """A CA in ``directory`` and a node certificate for each name; returns the directory."""
    certs.init_ca(directory)
    for name in names:
        certs.issue(directory, name, ips=LOCAL, dns=["localhost"])
    return directory


def node_flags(ca_dir: Path, cert: str, *, peer_ca_dir: Path | None = None,
               client_auth: bool = False) -> list[str]:
    """One certificate for every port, as ``make run SECURE=1`` does."""
    peer_ca_dir = peer_ca_dir or ca_dir
    flags = ["--cert-file", str(ca_dir / f"{cert}.pem"),
             "--key-file", str(ca_dir / f"{cert}-key.pem"),
             "--trusted-ca-file", str(ca_dir / "ca.pem"),
             "--peer-cert-file", str(peer_ca_dir / f"{cert}.pem"),
             "--peer-key-file", str(peer_ca_dir / f"{cert}-key.pem"),
             "--peer-trusted-ca-file", str(peer_ca_dir / "ca.pem")]
    return [*flags, "--client-cert-auth"] if client_auth else flags


def reload_config(tmp_path: Path) -> list[str]:
    """A TOML file with a short reload period (no flag for it: a setting for tests)."""
    path = tmp_path / "tls.toml"
    path.write_text(f"tls_reload_s = {TLS_RELOAD_S}\n")
    return ["--config", str(path)]


def cluster_of(tmp_path: Path, flags: Callable[[str], list[str]], size: int = 3,
               ) -> contextlib.AbstractContextManager[Cluster]:
    """A cluster whose members' TLS flags come from ``flags(name)``."""
    return running_cluster(tmp_path, size, per_node=flags)


def tls_for(ca_dir: Path, user: str | None = None) -> TLSSettings:
    if user is None:
        return TLSSettings(ca_file=ca_dir / "ca.pem")
    return TLSSettings(ca_file=ca_dir / "ca.pem", cert_file=ca_dir / f"{user}.pem",
                       key_file=ca_dir / f"{user}-key.pem")


def leader_of(nodes: list[NodeProcess], tls: TLSSettings, timeout: float = 60.0) -> str:
    """Wait until one of ``nodes`` reports a leader (over TLS); its name."""
    found: list[str] = []

    def elected() -> bool:
        for n in nodes:
            with contextlib.suppress(QuorumKVError):
                with Client([n.client_address], timeout=2.0, tls=tls) as c:
                    leader = c.status().get("leader")
                if leader:
                    found.append(str(leader))
                    return True
        return False

    wait_until(elected, timeout, "a leader")
    return found[0]


def served_serial(node: NodeProcess, ca_file: Path) -> int:
    """The serial of the certificate ``node``'s client port presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", node.client_port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def https_get(node: NodeProcess, path: str, ctx: ssl.SSLContext) -> tuple[int, Any]:
    assert node.http_port is not None
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    with opener.open(f"https://127.0.0.1:{node.http_port}{path}", timeout=60) as resp:
        return resp.status, json.loads(resp.read())


def log_of(node: NodeProcess) -> str:
    return node.log_path.read_text(errors="replace")


# -- one secured cluster for most tests ---------------------------------------------------


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    root = tmp_path_factory.mktemp("tls")
    ca_dir = make_ca(root / "certs", "n1", "n2", "n3", "n4")
    certs.issue(ca_dir, "root", client_only=True)

    def flags(name: str) -> list[str]:
        if name != "n1":
            return [*node_flags(ca_dir, name), *reload_config(root)]
        # n1 takes its TLS settings from TOML: paths there must work as the flags do.
        toml = root / "n1.toml"
        toml.write_text("\n".join([
            f"tls_reload_s = {TLS_RELOAD_S}",
            f'cert_file = "{ca_dir / "n1.pem"}"', f'key_file = "{ca_dir / "n1-key.pem"}"',
            f'trusted_ca_file = "{ca_dir / "ca.pem"}"',
            f'peer_cert_file = "{ca_dir / "n1.pem"}"',
            f'peer_key_file = "{ca_dir / "n1-key.pem"}"',
            f'peer_trusted_ca_file = "{ca_dir / "ca.pem"}"', ""]))
        return ["--config", str(toml)]

    with cluster_of(root, flags) as cluster:
        leader_of(cluster.nodes, tls_for(ca_dir))
        yield cluster, ca_dir


def test_clients_read_and_write_over_tls_at_every_level(
        secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    with cluster.client(timeout=20.0, tls=tls_for(ca_dir)) as c:
        c.put("tls/k", "v1")
        item = c.get("tls/k")
        assert item is not None and item.value == b"v1"
        # `all` levels: the leader calls every member's client port, over TLS too.
        c.put("tls/all", "v2", consistency="all")
        item = c.get("tls/all", consistency="all")
        assert item is not None and item.value == b"v2"
    # A follower's status asks the leader for its view (a member-to-member call).
    with Client([cluster.nodes[1].client_address], timeout=20.0, tls=tls_for(ca_dir)) as c:
        status = c.status()
    assert status["leader_view_error"] is None, status


def test_https_serves_the_api_and_health(secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    with cluster.client(timeout=20.0, tls=tls_for(ca_dir)) as c:
        c.put("tls/http", "over-https")
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    for node in cluster.nodes:
        status, body = https_get(node, "/health", ctx)
        assert status == 200, body
        # `all` from any node: forwarded to the leader, which asks every member.
        status, body = https_get(node, "/v1/kv/range?key=tls/http&consistency=all", ctx)
        assert status == 200, body
        assert body["kvs"][0]["value"] == "over-https", body
    # Plain HTTP on the HTTPS port gets nowhere.
    with pytest.raises((OSError, ValueError)):
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
            f"http://127.0.0.1:{cluster.nodes[0].http_port}/health", timeout=10).read()


def test_a_plaintext_client_is_refused_quickly_and_the_node_serves_on(
        secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    node = cluster.nodes[0]
    started = time.monotonic()
    with pytest.raises(NetworkError) as caught, Client([node.client_address],
                                                       timeout=3.0) as c:
        c.get("tls/k")
    assert "TLS" in caught.value.message, caught.value.message
    assert time.monotonic() - started < 30  # refused, not hung (generous: a loaded CI box)
    with Client([node.client_address], timeout=20.0, tls=tls_for(ca_dir)) as c:
        c.put("tls/after-plaintext", "still serving")
    assert "Traceback" not in log_of(node)


def test_a_client_trusting_another_ca_is_refused(secure: tuple[Cluster, Path],
                                                 tmp_path: Path) -> None:
    cluster, _ = secure
    other = make_ca(tmp_path / "other")
    with pytest.raises(NetworkError) as caught, Client(cluster.endpoints, timeout=3.0,
                                                       tls=tls_for(other)) as c:
        c.get("tls/k")
    assert "certificate" in caught.value.message, caught.value.message


def test_the_cli_speaks_tls_with_cacert(secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    endpoints = ",".join(cluster.endpoints)
    cacert = str(ca_dir / "ca.pem")
    # --cacert before the command, then after it: both placements work.
    put = run_cli("--cacert", cacert, "--endpoints", endpoints, "put", "tls/cli", "hello")
    assert put.returncode == 0, put.stderr
    got = run_cli("get", "tls/cli", "--endpoints", endpoints, "--cacert", cacert, "--json")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["kv"]["value"] == "hello"
    # From the environment, as the dev cluster suggests.
    env_got = run_cli("get", "tls/cli", "--endpoints", endpoints, "--json",
                      env={"QUORUMKV_CACERT": cacert})
    assert env_got.returncode == 0, env_got.stderr
    # status asks every member in turn: each over TLS.
    status = run_cli("--cacert", cacert, "--endpoints", endpoints, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert all(m["reachable"] for m in json.loads(status.stdout)["members"]), status.stdout
    plain = run_cli("get", "tls/cli", "--endpoints", endpoints, "--timeout", "2")
    assert plain.returncode == 1
    assert "TLS" in plain.stderr and len(plain.stderr.strip().splitlines()) == 1, plain.stderr


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quorumkv.cli", *args], capture_output=True,
                          text=True, timeout=120, check=False, env={**os.environ, **(env or {})})


def test_a_replaced_certificate_is_served_without_a_restart(
        secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    node = cluster.node("n2")
    before = served_serial(node, ca_dir / "ca.pem")
    renewed = certs.issue(ca_dir, "n2", ips=LOCAL, dns=["localhost"])
    assert renewed.serial != before
    wait_until(lambda: served_serial(node, ca_dir / "ca.pem") == renewed.serial, 60,
               "the renewed certificate to be served", ignore=(OSError,))
    # Peers reconnecting see it too (the peer contexts were reloaded alike), and the
    # cluster carries on.
    with cluster.client(timeout=20.0, tls=tls_for(ca_dir)) as c:
        c.put("tls/after-reload", "x", consistency="all")


def test_a_node_joins_a_tls_cluster(secure: tuple[Cluster, Path]) -> None:
    cluster, ca_dir = secure
    root = cluster.nodes[0].log_path.parent
    joiner = cluster.add_joiner(root, "n4", join=cluster.endpoints[:1],
                                extra=node_flags(ca_dir, "n4"))
    joiner.start()
    with cluster.client(timeout=20.0, tls=tls_for(ca_dir)) as c:
        wait_until(lambda: any(m.name == "n4" and m.voter for m in c.member_list()),
                   120, "n4 to join as a voter")
        c.put("tls/joined", "yes", consistency="all")
    with Client([joiner.client_address], timeout=20.0, tls=tls_for(ca_dir)) as c:
        wait_until(lambda: (kv := c.get("tls/joined", consistency="one")) is not None
                   and kv.value == b"yes", 60, "n4 to apply the write")


# -- clusters of their own ----------------------------------------------------------------


def test_client_certificates_when_required(tmp_path: Path) -> None:
    ca_dir = make_ca(tmp_path / "certs", "n1")
    certs.issue(ca_dir, "root", client_only=True)
    with cluster_of(tmp_path, lambda n: node_flags(ca_dir, n, client_auth=True),
                    size=1) as cluster:
        leader_of(cluster.nodes, tls_for(ca_dir, "root"))
        with pytest.raises(NetworkError) as caught, cluster.client(
                timeout=3.0, tls=tls_for(ca_dir)) as c:
            c.get("k")
        assert "certificate" in caught.value.message, caught.value.message
        with cluster.client(timeout=20.0, tls=tls_for(ca_dir, "root")) as c:
            c.put("k", "with a certificate")
            item = c.get("k")
            assert item is not None and item.value == b"with a certificate"
        # HTTPS likewise: no certificate, no answer; with one, served.
        ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
        with pytest.raises((OSError, ssl.SSLError)):
            https_get(cluster.nodes[0], "/health", ctx)
        ctx.load_cert_chain(str(ca_dir / "root.pem"), str(ca_dir / "root-key.pem"))
        assert https_get(cluster.nodes[0], "/health", ctx)[0] == 200


def test_with_auth_a_client_certificate_signs_in_as_its_common_name(tmp_path: Path) -> None:
    ca_dir = make_ca(tmp_path / "certs", "n1")
    for user in ("root", "reader"):
        certs.issue(ca_dir, user, client_only=True)
    with cluster_of(tmp_path, lambda n: node_flags(ca_dir, n, client_auth=True),
                    size=1) as cluster:
        leader_of(cluster.nodes, tls_for(ca_dir, "root"))
        address = parse_endpoint(cluster.nodes[0].client_address)

        async def as_cert(user: str, *reqs: Request) -> list[dict[str, Any]]:
            conn = await Connection.open(address, max_frame=1 << 20,
                                         tls=tls_for(ca_dir, user))
            try:
                return [await conn.request(r) for r in reqs]
            finally:
                await conn.close()

        grant = AuthRequest(action="role_grant", role="app", perm="read", key=b"app/",
                            range_end=b"app0")
        asyncio.run(as_cert(
            "root", AuthRequest(action="user_add", name="root", password="pw"),
            AuthRequest(action="role_add", role="root"),
            AuthRequest(action="user_grant_role", name="root", role="root"),
            AuthRequest(action="user_add", name="reader", password="pw"),
            AuthRequest(action="role_add", role="app"), grant,
            AuthRequest(action="user_grant_role", name="reader", role="app"),
            AuthRequest(action="enable")))
        # No password, no token: the certificate says who it is.
        status, = asyncio.run(as_cert(
            "root", WriteRequest(cmd=Put(key=b"app/x", value=b"v")),
            AuthRequest(action="status")))[1:]
        assert status["enabled"] and status["user"] == "root"
        got, = asyncio.run(as_cert("reader", ReadRequest(range=RangeRequest(key=b"app/x"))))
        assert got["kvs"][0]["value"] == b"v"
        with pytest.raises(PermissionDenied):
            asyncio.run(as_cert("reader", WriteRequest(cmd=Put(key=b"app/x", value=b"w"))))
        # HTTPS likewise.
        for user, expected in (("root", 200), ("reader", 403)):
            ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
            ctx.load_cert_chain(str(ca_dir / f"{user}.pem"), str(ca_dir / f"{user}-key.pem"))
            try:
                code = https_get(cluster.nodes[0], "/v1/kv/range?key=other/x", ctx)[0]
            except urllib.error.HTTPError as err:
                code = err.code
            assert code == expected, user


def test_an_expired_node_certificate_is_refused_by_clients(tmp_path: Path) -> None:
    ca_dir = make_ca(tmp_path / "certs", "n1")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    certs.issue(ca_dir, "n1-expired", ips=LOCAL, not_before=long_ago,
                not_after=long_ago + dt.timedelta(days=1))

    def flags(name: str) -> list[str]:
        return ["--cert-file", str(ca_dir / "n1-expired.pem"),
                "--key-file", str(ca_dir / "n1-expired-key.pem")]

    with cluster_of(tmp_path, flags, size=1) as cluster:
        node = cluster.nodes[0]
        wait_until(lambda: socket.create_connection(("127.0.0.1", node.client_port),
                                                    timeout=5).close() is None,
                   60, "the client port to listen", ignore=(OSError,))
        with pytest.raises(NetworkError) as caught, cluster.client(
                timeout=3.0, tls=tls_for(ca_dir)) as c:
            c.get("k")
        assert "expired" in caught.value.message, caught.value.message


def test_a_tls_client_to_a_plaintext_port_is_told_so(tmp_path: Path) -> None:
    ca_dir = make_ca(tmp_path / "certs")
    with running_cluster(tmp_path, size=1) as cluster:
        cluster.leader_name()
        with pytest.raises(NetworkError) as caught, cluster.client(
                timeout=3.0, tls=tls_for(ca_dir)) as c:
            c.get("k")
        assert "TLS" in caught.value.message, caught.value.message
        with cluster.client(timeout=20.0) as c:
            c.put("k", "plaintext still served")


def test_peers_outside_the_cluster_ca_or_naming_another_member_are_refused(
        tmp_path: Path) -> None:
    """n4's certificates come from another CA; n5 presents a certificate of the right CA
    issued for "n9". n1-n3 (a majority of five) elect a leader and serve; n4 and n5 never
    take part."""
    ca_dir = make_ca(tmp_path / "certs", "n1", "n2", "n3", "n9")
    other = make_ca(tmp_path / "other", "n4")

    def flags(name: str) -> list[str]:
        if name == "n4":
            return node_flags(other, "n4")  # every port: a stranger's certificates
        if name == "n5":
            return node_flags(ca_dir, "n9")
        return node_flags(ca_dir, name)

    with cluster_of(tmp_path, flags, size=5) as cluster:
        good = cluster.nodes[:3]
        leader = leader_of(good, tls_for(ca_dir))
        assert leader in {"n1", "n2", "n3"}
        with Client([n.client_address for n in good], timeout=20.0,
                    tls=tls_for(ca_dir)) as c:
            c.put("mtls/k", "v")
        n4, n5 = cluster.node("n4"), cluster.node("n5")
        # The stranger cannot verify anyone (nor they it): it says so, and stays behind.
        wait_until(lambda: "certificate verify failed" in log_of(n4), 60,
                   "n4 to report the members' certificates as untrusted")
        # The impostor's connections are refused by name, on both sides.
        wait_until(lambda: any("certificate names n9, localhost, not member" in log_of(n)
                               for n in good), 60, "a member to refuse n9's certificate")
        for straggler, ca in ((n4, other), (n5, ca_dir)):
            with Client([straggler.client_address], timeout=5.0, tls=tls_for(ca)) as c:
                status = c.status(local=True)
            assert status["leader"] is None, status
