"""The development CA (``quorumkv certs``) and the TLS pieces built on it.

Handshakes are real: ``ssl`` on both ends of a socketpair, the server's side in
a thread.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509

from quorumkv.cli import main
from quorumkv.client import TLSSettings
from quorumkv.errors import InvalidArgument
from quorumkv.security import certs
from quorumkv.security.tls import (
    CertReloader,
    common_name,
    names_member,
    node_client_tls,
    peer_contexts,
    server_context,
)
from quorumkv.server.config import NodeConfig, node_id_for


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    certs.init_ca(directory)
    return directory


def server_ctx(cert: certs.Issued, *, client_ca: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str | None,
              ) -> tuple[dict[str, object] | None, dict[str, object] | None]:
    """A TLS handshake over a socketpair: (what the client saw of the server's
    certificate, what the server saw of the client's). Raises the client's error."""
    left, right = socket.socketpair()
    seen: dict[str, object] = {}

    def serve() -> None:
        try:
            with server.wrap_socket(right, server_side=True) as s:
                seen["client_cert"] = s.getpeercert()
                s.sendall(b"ok")  # TLS 1.3: the client learns of a refusal on its read
        except (ssl.SSLError, OSError) as e:
            seen["error"] = e

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(left, server_hostname=server_hostname) as s:
            peer = s.getpeercert()
            assert s.recv(2) == b"ok"
    finally:
        left.close()
        thread.join(timeout=30)
        right.close()
    client_cert = seen.get("client_cert")
    assert client_cert is None or isinstance(client_cert, dict)
    return peer, client_cert


def test_an_issued_certificate_verifies_by_name_and_by_ip(ca_dir: Path) -> None:
    n1 = certs.issue(ca_dir, "n1", ips=["127.0.0.1"], dns=["localhost"])
    client = TLSSettings(ca_file=ca_dir / "ca.pem").context()
    for hostname in ("n1", "localhost", "127.0.0.1"):
        peer, _ = handshake(server_ctx(n1), client, hostname)
        assert peer is not None
        assert certs.certificate_names(peer) == ("n1", "localhost")
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]  # type: ignore[operator]
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server_ctx(n1), client, "n2")


def test_certificates_of_another_ca_and_expired_ones_are_refused(ca_dir: Path,
                                                                 tmp_path: Path) -> None:
    certs.init_ca(tmp_path / "other")
    stranger = certs.issue(tmp_path / "other", "n1", ips=["127.0.0.1"])
    client = TLSSettings(ca_file=ca_dir / "ca.pem").context()
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(server_ctx(stranger), client, "n1")
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    expired = certs.issue(ca_dir, "old", not_before=long_ago,
                          not_after=long_ago + dt.timedelta(days=1))
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        handshake(server_ctx(expired), client, "old")


def test_client_certificates_and_their_common_name(ca_dir: Path) -> None:
    n1 = certs.issue(ca_dir, "n1")
    root = certs.issue(ca_dir, "root", client_only=True)
    with_cert = TLSSettings(ca_file=ca_dir / "ca.pem", cert_file=root.cert_file,
                            key_file=root.key_file).context()
    _, seen = handshake(server_ctx(n1, client_ca=ca_dir / "ca.pem"), with_cert, "n1")
    assert seen is not None and certs.certificate_names(seen) == ("root",)
    # A client-only certificate cannot serve: its EKU is clientAuth alone.
    with pytest.raises(ssl.SSLCertVerificationError, match="purpose"):
        handshake(server_ctx(root), TLSSettings(ca_file=ca_dir / "ca.pem").context(), "root")
    # Without a certificate, a server that requires one refuses the client.
    without = TLSSettings(ca_file=ca_dir / "ca.pem").context()
    with pytest.raises((ssl.SSLError, OSError)):
        handshake(server_ctx(n1, client_ca=ca_dir / "ca.pem"), without, "n1")


def test_common_name_and_member_names_of_a_live_connection(ca_dir: Path) -> None:
    n1 = certs.issue(ca_dir, "n1", dns=["n1.example"])
    client = TLSSettings(ca_file=ca_dir / "ca.pem").context()
    left, right = socket.socketpair()
    server = server_ctx(n1)
    thread = threading.Thread(target=lambda: server.wrap_socket(right, server_side=True)
                              .recv(1))
    thread.start()
    try:
        with client.wrap_socket(left, server_hostname="n1") as s:
            assert common_name(s) == "n1"
            assert names_member(s, node_id_for("n1")) == (True, ("n1", "n1.example"))
            assert names_member(s, node_id_for("n2"))[0] is False
            s.sendall(b"x")
    finally:
        thread.join(timeout=30)
        left.close()
        right.close()
    assert common_name(None) is None
    assert names_member(None, 1) == (False, ())


def test_names_read_from_der_bytes(ca_dir: Path) -> None:
    n1 = certs.issue(ca_dir, "n1", dns=["a.example", "b.example"], ips=["10.0.0.1"])
    der = x509.load_pem_x509_certificate(n1.cert_file.read_bytes()).public_bytes(
        certs.serialization.Encoding.DER)
    assert certs.certificate_names(der) == ("n1", "a.example", "b.example")
    assert certs.certificate_names(b"not a certificate") == ()
    assert certs.certificate_names(None) == ()


def test_key_files_are_private_and_certificates_readable(ca_dir: Path) -> None:
    issued = certs.issue(ca_dir, "n1")
    for key in (ca_dir / "ca-key.pem", issued.key_file):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(issued.cert_file.stat().st_mode) == 0o644
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in ca_dir.iterdir()) == [
        "ca-key.pem", "ca.pem", "n1-key.pem", "n1.pem"]


def test_bad_names_and_addresses_are_invalid_arguments(ca_dir: Path) -> None:
    with pytest.raises(InvalidArgument, match="certificate name"):
        certs.issue(ca_dir, "../n1")
    with pytest.raises(InvalidArgument, match="IP address"):
        certs.issue(ca_dir, "n1", ips=["300.1.1.1"])
    with pytest.raises(InvalidArgument, match="no CA"):
        certs.issue(ca_dir / "missing", "n1")
    with pytest.raises(InvalidArgument, match="both cert_file and key_file"):
        TLSSettings(cert_file=Path("c.pem"))


def test_cli_init_and_issue(tmp_path: Path) -> None:
    runner = CliRunner()
    d = str(tmp_path / "certs")
    made = runner.invoke(main, ["certs", "init", "--dir", d, "--days", "30"])
    assert made.exit_code == 0, made.output
    again = runner.invoke(main, ["certs", "init", "--dir", d])
    assert again.exit_code == 1
    assert "already exists" in again.output and len(again.output.strip().splitlines()) == 1
    ca_before = (tmp_path / "certs" / "ca.pem").read_bytes()
    forced = runner.invoke(main, ["certs", "init", "--dir", d, "--force"])
    assert forced.exit_code == 0, forced.output
    assert (tmp_path / "certs" / "ca.pem").read_bytes() != ca_before

    node = runner.invoke(main, ["certs", "issue", "n1", "--dir", d, "--ip", "127.0.0.1",
                                "--dns", "localhost", "--days", "10"])
    assert node.exit_code == 0, node.output
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "n1.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["n1", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {x509.ExtendedKeyUsageOID.SERVER_AUTH,
                          x509.ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(days=10,
                                                                                minutes=10)

    user = runner.invoke(main, ["certs", "issue", "root", "--dir", d, "--client"])
    assert user.exit_code == 0, user.output
    cert = x509.load_pem_x509_certificate((tmp_path / "certs" / "root.pem").read_bytes())
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]

    bad = runner.invoke(main, ["certs", "issue", "n2", "--dir", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and "no CA" in bad.output


def test_a_reloaded_certificate_serves_new_handshakes_and_a_broken_one_is_kept_out(
        ca_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = certs.issue(ca_dir, "n1")
    server = server_ctx(first)
    reloader = CertReloader()
    reloader.watch(first.cert_file, first.key_file, server)
    client = TLSSettings(ca_file=ca_dir / "ca.pem").context()

    def serial() -> int:
        left, right = socket.socketpair()
        thread = threading.Thread(target=lambda: server.wrap_socket(right, server_side=True)
                                  .recv(1))
        thread.start()
        try:
            with client.wrap_socket(left, server_hostname="n1") as s:
                der = s.getpeercert(binary_form=True)
                s.sendall(b"x")
        finally:
            thread.join(timeout=30)
            left.close()
            right.close()
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    assert reloader.check() == 0
    assert serial() == first.serial
    second = certs.issue(ca_dir, "n1")
    assert reloader.check() == 1
    assert serial() == second.serial
    # A half-written file: logged, the loaded certificate kept, tried again later.
    second.cert_file.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    with caplog.at_level(logging.WARNING, logger="quorumkv.security.tls"):
        assert reloader.check() == 0
    assert "keeping the loaded one" in caplog.text
    assert serial() == second.serial
    third = certs.issue(ca_dir, "n1")
    assert reloader.check() == 1
    assert serial() == third.serial


def test_contexts_trust_the_configured_ca_only(ca_dir: Path, tmp_path: Path) -> None:
    n1 = certs.issue(ca_dir, "n1", ips=["127.0.0.1"])
    ca = ca_dir / "ca.pem"
    config = NodeConfig(name="n1", data_dir=tmp_path / "data", cert_file=n1.cert_file,
                        key_file=n1.key_file, trusted_ca_file=ca, client_cert_auth=True,
                        peer_cert_file=n1.cert_file, peer_key_file=n1.key_file,
                        peer_trusted_ca_file=ca)
    server = server_context(config)
    assert server is not None and server.verify_mode == ssl.CERT_REQUIRED
    # Client certificates of the system's CAs must not pass for the cluster's.
    assert len(server.get_ca_certs()) == 1
    peers = peer_contexts(config)
    assert peers is not None
    for ctx in (peers.server, peers.client):
        assert ctx.verify_mode == ssl.CERT_REQUIRED and len(ctx.get_ca_certs()) == 1
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not peers.client.check_hostname  # the member name is checked instead
    assert len(TLSSettings(ca_file=ca).context().get_ca_certs()) == 1
    # Members call each other's client ports with their peer certificate.
    assert node_client_tls(config) == TLSSettings(ca_file=ca, cert_file=n1.cert_file,
                                                  key_file=n1.key_file)
    plain = NodeConfig(name="n1", data_dir=tmp_path / "data")
    assert server_context(plain) is None and peer_contexts(plain) is None
    assert node_client_tls(plain) is None
    broken = NodeConfig(name="n1", data_dir=tmp_path / "data", cert_file=n1.cert_file,
                        key_file=ca_dir / "ca-key.pem")
    with pytest.raises(InvalidArgument, match="cannot load the certificate"):
        server_context(broken)
