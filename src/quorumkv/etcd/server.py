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
trusted CA when ``client_cert_auth`` is on. The files are read at start;
unlike the other ports this one does not reload them while running.
"""

from __future__ import annotations

import asyncio
import logging
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


def server_credentials(config: NodeConfig) -> Any:
    """The port's TLS credentials (the client port's files), None for plaintext."""
    if config.cert_file is None or config.key_file is None:
        return None
    try:
        key, cert = config.key_file.read_bytes(), config.cert_file.read_bytes()
        ca = (config.trusted_ca_file.read_bytes()
              if config.client_cert_auth and config.trusted_ca_file is not None else None)
    except OSError as e:
        raise InvalidArgument(f"cannot read the etcd port's certificate files: {e}") from None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=config.client_cert_auth)


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
