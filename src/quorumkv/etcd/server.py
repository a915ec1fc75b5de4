"""EtcdServer: the etcd v3 API on a port of its own (``serve --etcd-listen``).

A grpc.aio server on the node's event loop, serving etcd's services (one
module each: kv_service.py; :data:`SERVICES` lists them) so that etcdctl and
etcd's client libraries work against quorumkv unmodified.
docs/etcd-compatibility.md says which methods are served and how.

Keepalive: etcd's clients ping idle connections (every 10-30 s, also with no
call in flight); gRPC's default server policy counts such pings as strikes
and closes the connection with "too many pings". The options below accept a
ping every 5 s, without calls, and never strike, as etcd's own server does.

TLS: if the client port speaks TLS, this port does too, with the same
certificate and key, and requires a client certificate signed by the
trusted CA when ``client_cert_auth`` is on. Changed files are picked up
without a restart, as on the other ports: gRPC asks :class:`CertFetcher`
before each new connection's handshake, and it rereads the files when
their modification times moved (looked at once per ``tls_reload_s`` at
most). A pair that does not load (half copied, key not matching) is logged
and the old one kept.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import grpc

from quorumkv.errors import InvalidArgument
from quorumkv.etcd.auth_service import AuthService
from quorumkv.etcd.calls import EtcdService
from quorumkv.etcd.cluster_service import ClusterService
from quorumkv.etcd.generated import etcd_proto
from quorumkv.etcd.kv_service import KVService
from quorumkv.etcd.lease_service import LeaseService
from quorumkv.etcd.maintenance_service import MaintenanceService
from quorumkv.etcd.watch_service import WatchService
from quorumkv.server.http_forward import close_forwarder

if TYPE_CHECKING:
    from quorumkv.server.config import NodeConfig
    from quorumkv.server.node import Node

log = logging.getLogger(__name__)

SERVICES: Final[tuple[type[EtcdService], ...]] = (KVService, WatchService, LeaseService,
                                                   ClusterService, MaintenanceService,
                                                   AuthService)
"""One class per etcd service; each registers its handlers on the server."""

GRPC_OVERHEAD_BYTES: Final = 512 * 1024
"""Room for the message framing beyond the largest request (etcd allows the same)."""
MAX_SEND_BYTES: Final = 2**31 - 1
"""A range answer may be large; etcd sends up to this too."""
SHUTDOWN_GRACE_S: Final = 2.0


def server_options(config: NodeConfig) -> list[tuple[str, Any]]:
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_receive_message_length", config.max_request_bytes + GRPC_OVERHEAD_BYTES),
        ("grpc.max_send_message_length", MAX_SEND_BYTES),
        # Two nodes on one host must not share a port (the harness picks free ones).
        ("grpc.so_reuseport", 0),
    ]


class CertFetcher:
    """The port's certificate configuration, reread when its files change."""

    def __init__(self, config: NodeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        assert config.cert_file is not None and config.key_file is not None
        self._files = [config.cert_file, config.key_file]
        self._ca = (config.trusted_ca_file
                    if config.client_cert_auth and config.trusted_ca_file is not None else None)
        if self._ca is not None:
            self._files.append(self._ca)
        self._interval = config.tls_reload_s
        self._clock = clock
        self._checked = clock()
        self.reloads = 0
        try:
            self._stamp = self._stamps()
            self.initial = self._configuration()
        except OSError as e:
            raise InvalidArgument(f"cannot read the etcd port's certificate files: {e}"
                                  ) from None

    def _stamps(self) -> tuple[int, ...]:
        return tuple(f.stat().st_mtime_ns for f in self._files)

    def _configuration(self) -> Any:
        cert_file, key_file = self._files[0], self._files[1]
        # Loading the pair into an SSL context checks that the key matches the
        # certificate, which gRPC would only find out in a client's handshake.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            str(cert_file), str(key_file))
        ca = self._ca.read_bytes() if self._ca is not None else None
        return grpc.ssl_server_certificate_configuration(
            [(key_file.read_bytes(), cert_file.read_bytes())], root_certificates=ca)

    def __call__(self) -> Any:
        """gRPC's fetcher: a new configuration, or None to keep the current one."""
        now = self._clock()
        if now - self._checked < self._interval:
            return None
        self._checked = now
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            configuration = self._configuration()
        except (OSError, ssl.SSLError) as e:
            log.warning("cannot reload the etcd port's certificate %s: %s; keeping the "
                        "loaded one", self._files[0], e)
            return None
        self._stamp = stamp
        self.reloads += 1
        log.info("reloaded the etcd port's certificate %s", self._files[0])
        return configuration


def server_credentials(config: NodeConfig) -> Any:
    """The port's TLS credentials (the client port's files), None for plaintext."""
    if config.cert_file is None or config.key_file is None:
        return None
    fetcher = CertFetcher(config)
    return grpc.dynamic_ssl_server_credentials(
        fetcher.initial, fetcher, require_client_authentication=config.client_cert_auth)


class EtcdServer:
    def __init__(self, node: Node, host: str, port: int) -> None:
        self._node = node
        self.host = host
        self.port = port
        """The port asked for; once started, the one bound (0 asks for any free one)."""
        self._server: Any = None

    async def start(self) -> None:
        # On a node's first start this compiles etcd's protocol (generated.py): in a
        # thread, as the client port is already serving on this loop.
        await asyncio.to_thread(etcd_proto)
        config = self._node.config
        server = grpc.aio.server(options=server_options(config))
        for service in SERVICES:
            service(self._node).register(server)
        address = f"{self.host}:{self.port}"
        credentials = server_credentials(config)
        try:
            bound = (server.add_insecure_port(address) if credentials is None
                     else server.add_secure_port(address, credentials))
        except RuntimeError as e:  # grpc's "Failed to bind"
            raise OSError(f"the etcd API cannot listen on {address}: {e}") from None
        if not bound:
            raise OSError(f"the etcd API cannot listen on {address}")
        await server.start()
        self._server, self.port = server, bound
        log.info("etcd v3 API (gRPC%s) on %s:%d", " over TLS" if credentials else "",
                 self.host, bound)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def close(self) -> None:
        """Refuse new calls, give those in flight a moment, then end them."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(SHUTDOWN_GRACE_S)
        # Writes sent on to the leader share the HTTP API's connections; with the HTTP
        # port off, nothing else would close them.
        await close_forwarder(self._node)
