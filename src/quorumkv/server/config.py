"""A node's configuration: command-line flags, optionally a TOML file underneath them."""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from quorumkv.errors import InvalidArgument
from quorumkv.raft.lease import lease_ticks_for

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def node_id_for(name: str) -> int:
    """A member's Raft id, derived from its name so every node computes the same one."""
    digest = hashlib.sha256(b"quorumkv-member:" + name.encode()).digest()
    return (int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)) or 1


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(f"malformed address {text!r}: expected HOST:PORT")
    return host.strip("[]"), int(port_text)


def parse_initial_cluster(text: str) -> dict[str, tuple[str, int]]:
    """``n1=127.0.0.1:7001,n2=127.0.0.1:7002`` -> {name: (host, port)}."""
    members: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, addr = item.partition("=")
        if not sep:
            raise InvalidArgument(
                f"malformed initial cluster member {item!r}: expected NAME=HOST:PORT")
        check_name(name)
        if name in members:
            raise InvalidArgument(f"member {name!r} is listed twice in the initial cluster")
        members[name] = parse_address(addr)
    if len(set(members.values())) != len(members):
        raise InvalidArgument("two initial members share one peer address")
    return members


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgument(f"invalid member name {name!r}: letters, digits, '.', '_', '-'")
    return name


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    name: str
    data_dir: Path
    peer_host: str = "127.0.0.1"
    peer_port: int = 7001
    client_host: str = "127.0.0.1"
    client_port: int = 7101
    http_host: str = "127.0.0.1"
    http_port: int | None = 7201
    """The HTTP/JSON API, /metrics and the dashboard; None turns the HTTP port off,
    0 takes any free port."""
    max_http_body_bytes: int = 2 << 20
    """An HTTP request body above this is refused with 413 before it is read whole."""
    etcd_host: str = "127.0.0.1"
    etcd_port: int | None = None
    """The etcd v3 API (gRPC, docs/etcd-compatibility.md); None (the default) turns it
    off, 0 takes any free port."""
    initial_cluster: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Peer addresses of the initial members (this node included)."""
    client_addresses: dict[str, str] = field(default_factory=dict)
    """Client addresses of other members, for NotLeader redirects."""
    etcd_addresses: dict[str, str] = field(default_factory=dict)
    """etcd API addresses of other members (``--etcd-urls``): the client URLs the etcd
    port's MemberList gives, which ``etcdctl ... --cluster`` dials."""
    peer_advertise: str | None = None
    """HOST:PORT others reach our peer port at, if not the listen address (a proxy,
    a NAT); what a joining node registers."""
    client_advertise: str | None = None
    cluster_token: str = "quorumkv"
    """Shared secret of the cluster: a node must present it to join, an operator to change
    the membership. Compared in constant time, never logged."""
    join: tuple[str, ...] = ()
    """Client addresses of members to ask for admission (an empty data directory joins
    the running cluster instead of bootstrapping one)."""
    join_timeout_s: float = 60.0
    leave_on_shutdown: bool = False
    """On SIGTERM, leave the cluster (hand over leadership, be removed) before stopping."""
    max_voters: int = 7
    promote_lag: int = 1000
    """A joining learner becomes a voter once its log is within this many entries of the
    leader's."""
    suspect_phi: float = 8.0
    failed_phi: float = 16.0
    failed_after_s: float = 10.0
    """A peer silent this long is failed whatever phi says."""
    acceptable_pause_s: float = 0.5
    """A pause this long (a busy core, a slow disk) is not suspicious in itself."""
    min_heartbeat_std_s: float = 0.25
    """Floor on the spread of heartbeat intervals the detector assumes: with perfectly
    regular heartbeats phi would leap from 0 to its cap within a few milliseconds."""
    storage_retry_s: float = 5.0
    """After the disk fails, how long the node waits before it tries to serve again."""
    watch_buffer_events: int = 10_000
    """Events that may wait for one watcher before it is cancelled as too slow."""
    watch_progress_s: float = 5.0
    """How often an idle watch that asked for progress learns the current revision."""
    max_watches: int = 10_000
    """Watches open on this node at once; beyond, a watch request gets ResourceExhausted."""
    max_watches_per_connection: int = 1000
    """Watches open on one client connection at once."""
    max_client_connections: int = 1024
    """Client connections open at once; a connection beyond it is answered with one
    ResourceExhausted error (request id 0) and closed."""
    client_frame_timeout_s: float = 30.0
    """A client that started a request frame must finish sending it within this time
    (while the node waits for it), or its connection is closed. An idle connection,
    with no incomplete frame, may stay open indefinitely."""
    health_interval_ms: int = 200
    """A peer that sent nothing else for this long sends a health ping."""
    tick_ms: int = 100
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    snapshot_threshold: int = 10_000
    """Applied entries beyond the last snapshot that trigger a new one."""
    lease_reads: bool = False
    """Serve quorum reads on the leader from its lease, without a heartbeat round
    (docs/consistency.md): linearizable only while clocks run within max_clock_drift."""
    max_clock_drift: float = 0.05
    """How far any member's clock may run fast or slow (a share); shortens the lease."""
    max_request_bytes: int = 4 << 20
    max_key_bytes: int = 4096
    max_value_bytes: int = 1536 << 10
    request_timeout_s: float = 5.0
    # -- transport security (docs/security.md) --------------------------------------------
    cert_file: Path | None = None
    """The node's certificate for its client and HTTP ports (PEM); with key_file, both ports
    speak TLS only."""
    key_file: Path | None = None
    trusted_ca_file: Path | None = None
    """CA bundle that signs client certificates (client_cert_auth), and that this node
    trusts when it calls other members' client ports."""
    client_cert_auth: bool = False
    """Require a client certificate signed by trusted_ca_file on the client and HTTP ports;
    with auth enabled, its common name is the user."""
    peer_cert_file: Path | None = None
    """The node's certificate for the peer port (PEM); with peer_key_file and
    peer_trusted_ca_file, peers speak mutual TLS and must present a certificate of the
    cluster CA naming their member."""
    peer_key_file: Path | None = None
    peer_trusted_ca_file: Path | None = None
    tls_reload_s: float = 10.0
    """How often certificate files are checked for changes (reloaded without a restart)."""
    # -- authentication -------------------------------------------------------------------
    auth_token_ttl_s: float = 300.0
    """Lifetime of a token from authenticate; the client signs in again after it."""
    auth_metrics: bool = False
    """With auth enabled, /metrics also needs a signed-in user."""
    login_failures_allowed: int = 5
    """Failed sign-ins for one user name or one client address before the next ones are
    refused for login_lockout_s (doubling while failures go on)."""
    login_lockout_s: float = 1.0
    # -- limits ---------------------------------------------------------------------------
    max_txn_ops: int = 128
    """Operations in one transaction (compares, then and else branches each)."""
    max_connections_per_address: int | None = None
    """Client connections from one client IP address at once; None: only
    max_client_connections bounds them."""
    max_leases_per_connection: int = 10_000
    """Leases granted through one client connection and still alive."""
    max_requests_per_s: float | None = None
    """Requests per second one client connection (on HTTP: one client address) may send,
    as a token bucket of max_request_burst; None: unlimited."""
    max_request_burst: int = 1000

    @property
    def lease_ticks(self) -> int:
        """The read lease's length in ticks (0: off), as lease.py derives it."""
        if not self.lease_reads:
            return 0
        return lease_ticks_for(self.election_ticks, self.max_clock_drift)

    def __post_init__(self) -> None:
        check_name(self.name)
        if self.initial_cluster and self.name not in self.initial_cluster:
            raise InvalidArgument(f"this node ({self.name}) is not in the initial cluster")
        if self.election_ticks <= self.heartbeat_ticks:
            raise InvalidArgument("the election timeout must be longer than the heartbeat")
        if not 0 <= self.max_clock_drift < 0.5:
            raise InvalidArgument("max_clock_drift must be at least 0 and below 0.5")
        if self.lease_reads and self.lease_ticks == 0:
            raise InvalidArgument(
                f"no read lease is safe with an election timeout of {self.election_ticks} "
                f"ticks and a clock drift of {self.max_clock_drift}: give more election "
                "ticks, or turn lease_reads off")
        for advertised in (self.peer_advertise, self.client_advertise):
            if advertised is not None:
                parse_address(advertised)
        if self.initial_cluster and self.join:
            raise InvalidArgument("--initial-cluster bootstraps a new cluster and --join "
                                  "joins a running one: give one of them")
        if not 1 <= self.max_voters <= 99:
            raise InvalidArgument("max_voters must be between 1 and 99")
        if self.promote_lag < 0:
            raise InvalidArgument("promote_lag must not be negative")
        if not 0 < self.suspect_phi <= self.failed_phi:
            raise InvalidArgument("thresholds must satisfy 0 < suspect_phi <= failed_phi")
        if (self.min_heartbeat_std_s <= 0 or self.acceptable_pause_s < 0
                or self.failed_after_s <= 0 or self.health_interval_ms <= 0):
            raise InvalidArgument("min_heartbeat_std_s, failed_after_s and health_interval_ms "
                                  "must be positive, acceptable_pause_s not negative")
        if self.http_port is not None and not 0 <= self.http_port <= 65535:
            raise InvalidArgument("http_port must be between 0 and 65535")
        if self.etcd_port is not None and not 0 <= self.etcd_port <= 65535:
            raise InvalidArgument("etcd_port must be between 0 and 65535")
        if self.max_http_body_bytes < 1024:
            raise InvalidArgument("max_http_body_bytes must be at least 1024")
        if (self.max_watches < 1 or self.max_watches_per_connection < 1
                or self.max_client_connections < 1 or not self.client_frame_timeout_s > 0):
            raise InvalidArgument("max_watches, max_watches_per_connection, "
                                  "max_client_connections and client_frame_timeout_s must "
                                  "be positive")

        if (self.cert_file is None) != (self.key_file is None):
            raise InvalidArgument("cert_file and key_file go together")
        peer_tls = (self.peer_cert_file, self.peer_key_file, self.peer_trusted_ca_file)
        if any(f is not None for f in peer_tls) and any(f is None for f in peer_tls):
            raise InvalidArgument("peer TLS needs peer_cert_file, peer_key_file and "
                                  "peer_trusted_ca_file together")
        if self.client_cert_auth and (self.cert_file is None or self.trusted_ca_file is None):
            raise InvalidArgument("client_cert_auth needs cert_file, key_file and "
                                  "trusted_ca_file")
        if not self.auth_token_ttl_s > 0 or not self.tls_reload_s > 0:
            raise InvalidArgument("auth_token_ttl_s and tls_reload_s must be positive")
        if self.login_failures_allowed < 1 or self.login_lockout_s < 0:
            raise InvalidArgument("login_failures_allowed must be positive, login_lockout_s "
                                  "not negative")
        if (self.max_txn_ops < 1 or self.max_leases_per_connection < 1
                or self.max_request_burst < 1
                or (self.max_connections_per_address is not None
                    and self.max_connections_per_address < 1)
                or (self.max_requests_per_s is not None and not self.max_requests_per_s > 0)):
            raise InvalidArgument("max_txn_ops, max_leases_per_connection, max_request_burst, "
                                  "max_connections_per_address and max_requests_per_s must "
                                  "be positive")

    @property
    def client_tls(self) -> bool:
        """The client and HTTP ports speak TLS."""
        return self.cert_file is not None

    @property
    def peer_tls(self) -> bool:
        return self.peer_cert_file is not None

    @property
    def node_id(self) -> int:
        return node_id_for(self.name)

    @property
    def peer_address(self) -> str:
        """Where other members reach our peer port (what joining registers)."""
        return self.peer_advertise or f"{self.peer_host}:{self.peer_port}"

    @property
    def http_address(self) -> str | None:
        return None if self.http_port is None else f"{self.http_host}:{self.http_port}"

    @property
    def etcd_address(self) -> str | None:
        return None if self.etcd_port is None else f"{self.etcd_host}:{self.etcd_port}"

    @property
    def client_address(self) -> str:
        """Where clients and members reach our client port."""
        return self.client_advertise or f"{self.client_host}:{self.client_port}"

    @property
    def cluster_id(self) -> int:
        """The id of the cluster the initial members bootstrap (0 without an initial
        cluster: a joining node learns it from the cluster and keeps it in its data dir)."""
        if not self.initial_cluster:
            return 0
        # Every initial member computes the same id without talking to the others.
        # The addresses make two clusters of the same names and token differ.
        members = ",".join(f"{n}={h}:{p}" for n, (h, p) in sorted(self.initial_cluster.items()))
        return node_id_for(f"{self.cluster_token}/{members}")

    def with_overrides(self, **changes: Any) -> NodeConfig:
        return replace(self, **changes)


def load_toml(path: Path) -> dict[str, Any]:
    """Read a node's TOML file; keys are NodeConfig's field names."""
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InvalidArgument(f"cannot read configuration {path}: {e}") from None
    known = {f.name for f in fields(NodeConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidArgument(f"unknown settings in {path}: {', '.join(unknown)}")
    if isinstance(raw.get("initial_cluster"), str):
        raw["initial_cluster"] = parse_initial_cluster(raw["initial_cluster"])
    for key in ("data_dir", "cert_file", "key_file", "trusted_ca_file", "peer_cert_file",
                "peer_key_file", "peer_trusted_ca_file"):
        if isinstance(raw.get(key), str):
            raw[key] = Path(raw[key])
    if isinstance(raw.get("join"), str):
        raw["join"] = tuple(p.strip() for p in raw["join"].split(",") if p.strip())
    elif isinstance(raw.get("join"), list):
        raw["join"] = tuple(raw["join"])
    return raw
