"""TLS for a node's ports and its clients: SSL contexts, identities, certificate reload.

Which certificate is used where (docs/security.md):

* the client and HTTP ports present ``cert_file``/``key_file``
  (:func:`server_context`); with ``client_cert_auth`` they require a client
  certificate signed by ``trusted_ca_file``;
* the peer port speaks mutual TLS with ``peer_cert_file``/``peer_key_file``,
  both sides requiring a certificate of ``peer_trusted_ca_file``
  (:func:`peer_contexts`). Hostnames are not checked there: the transport checks
  instead that the certificate names the member it speaks for
  (:func:`names_member`);
* a node calling another member's client port (``all`` levels, forwarding,
  joining, leaving) is a client like any other (:func:`node_client_tls`): it
  verifies the member against ``trusted_ca_file`` (else the peer CA) and
  presents its peer certificate, which ``trusted_ca_file`` must then trust when
  ``client_cert_auth`` is on.

Contexts are built once and kept: :class:`CertReloader` loads a changed
certificate into the very same context objects, so every handshake after the
reload presents the new certificate while established connections go on.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quorumkv.errors import InvalidArgument
from quorumkv.server.config import NodeConfig, node_id_for

log = logging.getLogger(__name__)

MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    try:
        ctx.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"cannot load the certificate {cert_file} with key {key_file}: "
                              f"{e}") from None


def _load_ca(ctx: ssl.SSLContext, ca_file: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as e:
        raise InvalidArgument(f"cannot load the CA certificates in {ca_file}: {e}") from None


def server_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The context of the client and HTTP ports; None if they speak plaintext."""
    if config.cert_file is None or config.key_file is None:
        return None
    # Not create_default_context: it would trust the system's CAs for client certificates.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSION
    _load_chain(ctx, config.cert_file, config.key_file)
    if config.client_cert_auth:
        assert config.trusted_ca_file is not None  # NodeConfig checks it
        _load_ca(ctx, config.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif config.trusted_ca_file is not None:
        # A client that offers a certificate gets it checked (and its name seen);
        # one without is still served.
        _load_ca(ctx, config.trusted_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


@dataclass(frozen=True, slots=True)
class PeerContexts:
    server: ssl.SSLContext
    """For connections peers open to us."""
    client: ssl.SSLContext
    """For our connections to peers."""


def peer_contexts(config: NodeConfig) -> PeerContexts | None:
    """Mutual TLS for the peer port; None if peers speak plaintext."""
    if (config.peer_cert_file is None or config.peer_key_file is None
            or config.peer_trusted_ca_file is None):
        return None
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for ctx in (server, client):
        ctx.minimum_version = MIN_VERSION
        _load_chain(ctx, config.peer_cert_file, config.peer_key_file)
        _load_ca(ctx, config.peer_trusted_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    # Peers are dialled at whatever address the registry holds; identity is the
    # member name in the certificate, checked by the transport (names_member).
    client.check_hostname = False
    return PeerContexts(server=server, client=client)


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSSettings:
    """How a client speaks TLS to a node's client port.

    ``ca_file`` is the CA bundle that signs the nodes' certificates (None: the
    system's trusted CAs); ``cert_file``/``key_file`` a client certificate, for
    nodes that require one; ``server_name`` the name to expect in the node's
    certificate instead of the host dialled (an IP address is matched against
    the certificate's IP SANs).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidArgument("a client certificate needs both cert_file and key_file")

    def context(self) -> ssl.SSLContext:
        """A client context that verifies the node's certificate and host name."""
        # Verifies the certificate and the host name (PROTOCOL_TLS_CLIENT's defaults).
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = MIN_VERSION
        if self.ca_file is not None:
            _load_ca(ctx, Path(self.ca_file))  # that CA only, not the system's besides
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.cert_file is not None and self.key_file is not None:
            _load_chain(ctx, Path(self.cert_file), Path(self.key_file))
        return ctx


def node_client_tls(config: NodeConfig) -> TLSSettings | None:
    """How this node calls other members' client ports: with TLS when its own client port
    speaks TLS (members are configured alike), presenting its peer certificate."""
    if not config.client_tls:
        return None
    return TLSSettings(ca_file=config.trusted_ca_file or config.peer_trusted_ca_file,
                       cert_file=config.peer_cert_file, key_file=config.peer_key_file)


# -- identities ---------------------------------------------------------------------------


def common_name(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The common name of the verified certificate the other side presented, or None
    (plaintext, no certificate, or one not verified)."""
    if ssl_object is None:
        return None
    try:
        cert: dict[str, Any] = dict(ssl_object.getpeercert() or {})
    except (ValueError, ssl.SSLError):  # handshake not done, or the connection closed
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def connection_cert_user(writer: asyncio.StreamWriter) -> str | None:
    """The client-certificate common name of a stream connection (the client port)."""
    return common_name(writer.get_extra_info("ssl_object"))


def request_cert_user(request: Any) -> str | None:
    """The client-certificate common name of an aiohttp request (the HTTP port)."""
    transport = getattr(request, "transport", None)
    if transport is None:
        return None
    return common_name(transport.get_extra_info("ssl_object"))


def names_member(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, node_id: int,
                 ) -> tuple[bool, tuple[str, ...]]:
    """Whether the peer's certificate names the member ``node_id`` (a SAN DNS name or
    the common name whose node_id_for is that id), and the names it carries."""
    # Here, not at the top: clients import this module, and cryptography takes a while.
    from quorumkv.security.certs import certificate_names  # noqa: PLC0415

    if ssl_object is None:
        return False, ()
    try:
        names = certificate_names(ssl_object.getpeercert())
    except (ValueError, ssl.SSLError):
        return False, ()
    return any(node_id_for(n) == node_id for n in names), names


# -- reload -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Watched:
    contexts: tuple[ssl.SSLContext, ...]
    cert_file: Path
    key_file: Path
    stamp: tuple[int, int]


def _stamp(cert_file: Path, key_file: Path) -> tuple[int, int]:
    return cert_file.stat().st_mtime_ns, key_file.stat().st_mtime_ns


class CertReloader:
    """Loads changed certificate files into the contexts that use them.

    A change is seen by the files' modification times; a file that cannot be
    read or loaded (half copied, key not matching) is logged and the old
    certificate kept, and it is tried again at the next check.
    """

    def __init__(self) -> None:
        self._watched: list[_Watched] = []
        self.reloads = 0
        """Successful reloads so far."""

    def watch(self, cert_file: Path, key_file: Path, *contexts: ssl.SSLContext) -> None:
        self._watched.append(_Watched(contexts, Path(cert_file), Path(key_file),
                                      _stamp(Path(cert_file), Path(key_file))))

    def __bool__(self) -> bool:
        return bool(self._watched)

    def check(self) -> int:
        """Reload whatever changed since the last check; how many were reloaded."""
        reloaded = 0
        for w in self._watched:
            try:
                stamp = _stamp(w.cert_file, w.key_file)
            except OSError as e:
                log.warning("cannot check certificate %s: %s; keeping the loaded one",
                            w.cert_file, e)
                continue
            if stamp == w.stamp:
                continue
            try:
                # Every context is tried before the stamp moves on, so a failure on one
                # is retried on all next time rather than leaving them different.
                for ctx in w.contexts:
                    ctx.load_cert_chain(str(w.cert_file), str(w.key_file))
            except (OSError, ssl.SSLError) as e:
                log.warning("cannot reload certificate %s (key %s): %s; keeping the "
                            "loaded one", w.cert_file, w.key_file, e)
                continue
            w.stamp = stamp
            reloaded += 1
            self.reloads += 1
            log.info("reloaded certificate %s", w.cert_file)
        return reloaded

    async def run(self, interval: float) -> None:
        """Check every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                # Reading a few small files: not worth a thread.
                self.check()
            except Exception:
                log.exception("checking certificates for changes failed")
