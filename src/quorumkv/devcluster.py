"""A local three-node cluster of real ``quorumkv serve`` processes, for trying quorumkv out.

``python -m quorumkv.devcluster`` (what ``make run`` runs) starts the nodes
on 127.0.0.1, waits until they have elected a leader, prints the endpoints,
the leader and commands to try, and then stays quiet: each node's log goes
to a file beside its data. Ctrl-C (SIGINT), SIGTERM or SIGHUP stops every
node by pid with SIGTERM (SIGKILL for any that outlives the grace period)
and exits 0.

Ports: peer ports BASE..BASE+2, client ports BASE+100..BASE+102 and HTTP
ports (API, metrics, dashboard) BASE+200..BASE+202, BASE being
``--base-port`` (7001). Data lives under ``--data-dir`` (./data) and
is reused, so a restarted cluster has its keys; ``--fresh`` uses a new
temporary directory instead and removes it afterwards.

The nodes run in their own sessions, so a Ctrl-C in the terminal reaches
only this process, which then stops them in order, each exactly once.

``--secure`` (``make run SECURE=1``) serves the client and HTTP ports over TLS
and the peer ports over mutual TLS, with certificates of a development CA in
DATA/certs (made on first use, as ``quorumkv certs`` would: one certificate
per node for 127.0.0.1 and localhost, and a client certificate ``root``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import click

from quorumkv.client import Client, TLSSettings
from quorumkv.errors import QuorumKVError
from quorumkv.security import certs as certs_module

NAMES = ("n1", "n2", "n3")
DEFAULT_BASE_PORT = 7001
CLIENT_PORT_OFFSET = 100
HTTP_PORT_OFFSET = 200
HOST = "127.0.0.1"
LEADER_TIMEOUT = 60.0
STOP_GRACE = 10.0
POLL_S = 0.1


@dataclass(slots=True)
class DevNode:
    name: str
    peer_port: int
    client_port: int
    http_port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    reported_exit: bool = False
    scheme: str = "http"

    @property
    def client_address(self) -> str:
        return f"{HOST}:{self.client_port}"

    @property
    def dashboard_url(self) -> str:
        return f"{self.scheme}://{HOST}:{self.http_port}/"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Stop(Exception):
    """A stop signal arrived, or the cluster cannot be started."""


class DevCluster:
    def __init__(self, base_port: int, data_root: Path, tick_ms: int,
                 certs: Path | None = None) -> None:
        """``certs``: the CA's directory; the cluster speaks TLS if given."""
        self.nodes = [DevNode(name=name, peer_port=base_port + i,
                              client_port=base_port + CLIENT_PORT_OFFSET + i,
                              http_port=base_port + HTTP_PORT_OFFSET + i,
                              data_dir=data_root / name, log_path=data_root / f"{name}.log",
                              scheme="https" if certs else "http")
                      for i, name in enumerate(NAMES)]
        self.tick_ms = tick_ms
        self.certs = certs
        self.stop_requested = False

    @property
    def endpoints(self) -> str:
        return ",".join(n.client_address for n in self.nodes)

    def busy_ports(self) -> list[int]:
        busy = []
        for n in self.nodes:
            for port in (n.peer_port, n.client_port, n.http_port):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    # As the server binds: a port in TIME_WAIT is reusable, one in use is not.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((HOST, port))
                    except OSError:
                        busy.append(port)
        return busy

    @property
    def tls(self) -> TLSSettings | None:
        if self.certs is None:
            return None
        return TLSSettings(ca_file=self.certs / certs_module.CA_CERT)

    def make_certs(self) -> None:
        """The CA (unless there is one) and whatever certificates are missing; existing
        ones are kept, so a restarted cluster presents what its clients already trust."""
        assert self.certs is not None
        if not (self.certs / certs_module.CA_CERT).exists():
            certs_module.init_ca(self.certs)
        for name in (*NAMES, "root"):
            if not (self.certs / f"{name}.pem").exists():
                certs_module.issue(self.certs, name, ips=[HOST], dns=["localhost"],
                                   client_only=name == "root")

    def tls_flags(self, name: str) -> list[str]:
        if self.certs is None:
            return []
        cert, key, ca = (str(self.certs / f"{name}.pem"), str(self.certs / f"{name}-key.pem"),
                         str(self.certs / certs_module.CA_CERT))
        return ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                "--peer-cert-file", cert, "--peer-key-file", key, "--peer-trusted-ca-file", ca]

    def start(self) -> None:
        initial = ",".join(f"{n.name}={HOST}:{n.peer_port}" for n in self.nodes)
        clients = ",".join(f"{n.name}={n.client_address}" for n in self.nodes)
        for n in self.nodes:
            if self.stop_requested:
                return
            n.data_dir.parent.mkdir(parents=True, exist_ok=True)
            args = [sys.executable, "-m", "quorumkv.cli", "serve", "--name", n.name,
                    "--data-dir", str(n.data_dir), "--peer-listen", f"{HOST}:{n.peer_port}",
                    "--client-listen", n.client_address,
                    "--http-listen", f"{HOST}:{n.http_port}", "--initial-cluster", initial,
                    "--client-urls", clients, "--tick-ms", str(self.tick_ms),
                    *self.tls_flags(n.name)]
            with open(n.log_path, "ab") as log:  # the child keeps its own copy of the fd
                n.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_for_leader(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_children(fatal=True)
            for n in self.nodes:
                if self.stop_requested:
                    raise Stop("stopped before a leader was elected")
                try:
                    with Client([n.client_address], timeout=1.0, tls=self.tls) as c:
                        leader = c.status().get("leader")
                except QuorumKVError:
                    continue  # not listening yet
                if leader:
                    return str(leader)
            time.sleep(POLL_S)
        raise Stop(f"no leader was elected within {timeout:g} s; see the logs in "
                   f"{self.nodes[0].log_path.parent}")

    def check_children(self, *, fatal: bool) -> None:
        """Report a node that exited on its own (once); while starting, that ends the start."""
        for n in self.nodes:
            if n.proc is None or n.running() or n.reported_exit:
                continue
            n.reported_exit = True
            message = f"{n.name} (pid {n.proc.pid}) exited with code {n.proc.returncode}; " \
                      f"see {n.log_path}"
            if fatal:
                raise Stop(message)
            click.echo(message, err=True)

    def stop(self) -> None:
        """SIGTERM to every node at once, then wait; SIGKILL whoever outlives the grace period."""
        running = [n for n in self.nodes if n.running()]
        for n in running:
            assert n.proc is not None
            os.kill(n.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for n in running:
            assert n.proc is not None
            try:
                n.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                click.echo(f"{n.name} (pid {n.proc.pid}) did not stop in {STOP_GRACE:g} s: "
                           "killing it", err=True)
                os.kill(n.proc.pid, signal.SIGKILL)
                n.proc.wait()


def _cli_command() -> str:
    """How to run the CLI from here: plain ``quorumkv`` only if that is really on PATH."""
    script = Path(sys.executable).parent / "quorumkv"
    found = shutil.which("quorumkv")
    if found and Path(found).resolve() == script.resolve():
        return "quorumkv"
    if script.exists():
        try:
            return str(script.relative_to(Path.cwd()))
        except ValueError:
            return str(script)
    return f"{sys.executable} -m quorumkv.cli"


def _print_ready(cluster: DevCluster, leader: str, data_note: str, base_port: int) -> None:
    say = click.echo
    say(f"quorumkv dev cluster: {len(cluster.nodes)} nodes on {HOST}, {data_note}")
    for n in cluster.nodes:
        assert n.proc is not None
        say(f"  {n.name}  client {n.client_address}  peer {HOST}:{n.peer_port}  "
            f"http {n.dashboard_url}  pid {n.proc.pid}  log {n.log_path}")
    say(f"endpoints: {cluster.endpoints}")
    say(f"leader: {leader}")
    say(f"dashboard: {cluster.nodes[0].dashboard_url}  (every node serves it; "
        f"metrics at {cluster.nodes[0].dashboard_url}metrics)")
    cli = _cli_command()
    if cluster.certs is not None:
        ca = cluster.certs / certs_module.CA_CERT
        say(f"TLS: client and HTTP ports over TLS, mutual TLS between the nodes; "
            f"certificates in {cluster.certs}")
        cli += f" --cacert {ca}"
    say("")
    say("Try, in another terminal:")
    if base_port != DEFAULT_BASE_PORT:
        say(f"  export QUORUMKV_ENDPOINTS={cluster.endpoints}")
    for example in ("put hello world", "get hello", "status"):
        say(f"  {cli} {example}")
    if cluster.certs is not None:
        ca = cluster.certs / certs_module.CA_CERT
        say(f"  curl --cacert {ca} {cluster.nodes[0].dashboard_url}health")
        say(f"  (or export QUORUMKV_CACERT={ca} and leave out --cacert)")
    say("")
    say("Ctrl-C stops the cluster.")


@click.command()
@click.option("--base-port", type=click.IntRange(1, 65535 - HTTP_PORT_OFFSET - len(NAMES)),
              default=DEFAULT_BASE_PORT, show_default=True,
              help="Peer ports are BASE..BASE+2, client ports BASE+100..BASE+102, HTTP "
                   "ports BASE+200..BASE+202.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where the nodes keep their data, reused on restart [./data].")
@click.option("--fresh", is_flag=True,
              help="Start empty in a temporary directory, removed when the cluster stops.")
@click.option("--tick-ms", type=click.IntRange(min=1), default=100, show_default=True,
              help="Raft tick length of every node.")
@click.option("--secure", is_flag=True,
              help="TLS on every port (mutual TLS between nodes), with a development CA in "
                   "DATA/certs made on first use.")
def main(base_port: int, data_dir: Path | None, fresh: bool, tick_ms: int,
         secure: bool) -> None:
    """Run a local three-node quorumkv cluster until Ctrl-C."""
    if fresh and data_dir is not None:
        raise click.UsageError("--fresh starts in a temporary directory: it takes no --data-dir")
    if fresh:
        root = Path(tempfile.mkdtemp(prefix="quorumkv-dev-"))
        data_note = f"fresh data in {root} (removed on exit)"
    else:
        root = (data_dir or Path("data")).resolve()  # printed, so say exactly where
        data_note = f"data in {root} (kept across restarts)"
    cluster = DevCluster(base_port, root, tick_ms, certs=root / "certs" if secure else None)
    busy = cluster.busy_ports()
    if busy:
        click.echo(f"cannot start: port(s) {', '.join(map(str, busy))} on {HOST} already in "
                   f"use (another dev cluster running?); choose others with --base-port",
                   err=True)
        _cleanup(root, fresh)
        sys.exit(1)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        # Only a flag: the loops below notice it, so no child is left half-started.
        cluster.stop_requested = True

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, request_stop)
    code = 0
    try:
        if cluster.certs is not None:
            try:
                cluster.make_certs()
            except QuorumKVError as e:
                raise Stop(f"cannot make certificates in {cluster.certs}: {e.message}") from None
        cluster.start()
        leader = cluster.wait_for_leader(LEADER_TIMEOUT)
        _print_ready(cluster, leader, data_note, base_port)
        while not cluster.stop_requested:
            cluster.check_children(fatal=False)
            time.sleep(POLL_S)
        click.echo("stopping the cluster...")
    except Stop as why:
        if not cluster.stop_requested:
            click.echo(f"cannot start: {why}", err=True)
            code = 1
    finally:
        cluster.stop()
        _cleanup(root, fresh)
    click.echo("stopped")
    sys.exit(code)


def _cleanup(root: Path, fresh: bool) -> None:
    if fresh:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
