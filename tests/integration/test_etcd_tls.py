"""The etcd port over TLS: the client port's certificate, client certificates required
with client_cert_auth; through etcd's stubs and, when it is installed, etcdctl."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from cluster_harness import free_ports, running_cluster, wait_until
from cryptography import x509

from quorumkv.etcd.generated import etcd_proto
from quorumkv.security import certs


def _flags(ca_dir: Path, name: str, etcd_port: int) -> list[str]:
    return ["--cert-file", str(ca_dir / f"{name}.pem"),
            "--key-file", str(ca_dir / f"{name}-key.pem"),
            "--trusted-ca-file", str(ca_dir / "ca.pem"), "--client-cert-auth",
            "--etcd-listen", f"127.0.0.1:{etcd_port}"]


def _stub(address: str, ca_dir: Path, user: str | None) -> tuple[grpc.Channel, Any]:
    chain = ((ca_dir / f"{user}-key.pem").read_bytes(), (ca_dir / f"{user}.pem").read_bytes()
             ) if user else (None, None)
    creds = grpc.ssl_channel_credentials(root_certificates=(ca_dir / "ca.pem").read_bytes(),
                                         private_key=chain[0], certificate_chain=chain[1])
    channel = grpc.secure_channel(address, creds)
    return channel, etcd_proto().rpc_pb2_grpc.KVStub(channel)


def test_etcd_port_speaks_tls_and_requires_client_certificates(tmp_path: Path) -> None:
    ca_dir = tmp_path / "certs"
    certs.init_ca(ca_dir)
    certs.issue(ca_dir, "n1", ips=["127.0.0.1"], dns=["localhost"])
    certs.issue(ca_dir, "alice", client_only=True)
    [port] = free_ports(1)
    address = f"127.0.0.1:{port}"
    rpc = etcd_proto().rpc_pb2
    with running_cluster(tmp_path, 1, per_node=lambda n: _flags(ca_dir, n, port)):
        channel, kv = _stub(address, ca_dir, "alice")
        try:
            wait_until(lambda: kv.Put(rpc.PutRequest(key=b"k", value=b"v"), timeout=5),
                       what="the etcd port over TLS", ignore=(grpc.RpcError,))
            got = kv.Range(rpc.RangeRequest(key=b"k"), timeout=5)
            assert got.kvs[0].value == b"v"
        finally:
            channel.close()
        # No client certificate: the handshake fails, nothing is served.
        channel, kv = _stub(address, ca_dir, None)
        try:
            with pytest.raises(grpc.RpcError) as refused:
                kv.Range(rpc.RangeRequest(key=b"k"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            channel.close()
        etcdctl = shutil.which("etcdctl")
        if etcdctl is not None:
            done = subprocess.run(
                [etcdctl, f"--endpoints={address}", "--cacert", str(ca_dir / "ca.pem"),
                 "--cert", str(ca_dir / "alice.pem"), "--key", str(ca_dir / "alice-key.pem"),
                 "get", "k", "--print-value-only"],
                capture_output=True, text=True, env={**os.environ, "ETCDCTL_API": "3"},
                timeout=60, check=False)
            assert (done.returncode, done.stdout) == (0, "v\n"), done.stderr


def _served_serial(port: int, ca_dir: Path, user: str) -> int:
    """The serial of the certificate the etcd port presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca_dir / "ca.pem"))
    ctx.load_cert_chain(str(ca_dir / f"{user}.pem"), str(ca_dir / f"{user}-key.pem"))
    ctx.set_alpn_protocols(["h2"])  # gRPC's
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_replaced_certificate_is_served_on_the_etcd_port_without_a_restart(
        tmp_path: Path) -> None:
    ca_dir = tmp_path / "certs"
    certs.init_ca(ca_dir)
    certs.issue(ca_dir, "n1", ips=["127.0.0.1"], dns=["localhost"])
    certs.issue(ca_dir, "alice", client_only=True)
    reload_toml = tmp_path / "reload.toml"
    reload_toml.write_text("tls_reload_s = 0.2\n")
    [port] = free_ports(1)
    rpc = etcd_proto().rpc_pb2
    with running_cluster(tmp_path, 1, per_node=lambda n: [
            *_flags(ca_dir, n, port), "--config", str(reload_toml)]):
        channel, kv = _stub(f"127.0.0.1:{port}", ca_dir, "alice")
        try:
            wait_until(lambda: kv.Put(rpc.PutRequest(key=b"k", value=b"v"), timeout=5),
                       what="the etcd port over TLS", ignore=(grpc.RpcError,))
        finally:
            channel.close()
        before = _served_serial(port, ca_dir, "alice")
        # A half-written key is refused and the old pair kept: the port still serves it.
        good_key = (ca_dir / "n1-key.pem").read_bytes()
        (ca_dir / "n1-key.pem").write_bytes(good_key[:40])
        time.sleep(0.5)
        assert _served_serial(port, ca_dir, "alice") == before
        (ca_dir / "n1-key.pem").write_bytes(good_key)
        renewed = certs.issue(ca_dir, "n1", ips=["127.0.0.1"], dns=["localhost"])
        assert renewed.serial != before
        wait_until(lambda: _served_serial(port, ca_dir, "alice") == renewed.serial, 60,
                   "the renewed certificate on the etcd port", ignore=(OSError,))
        channel, kv = _stub(f"127.0.0.1:{port}", ca_dir, "alice")
        try:
            assert kv.Range(rpc.RangeRequest(key=b"k"), timeout=10).kvs[0].value == b"v"
        finally:
            channel.close()
