"""Real quorumkv processes on 127.0.0.1 for integration tests, always cleaned up by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError

STARTUP_TIMEOUT = 60.0


def wait_until(predicate: Callable[[], object], timeout: float = 60.0,
               what: str = "condition",
               ignore: tuple[type[Exception], ...] = ()) -> None:
    """Poll ``predicate`` until it is true; a QuorumKVError (or one of ``ignore``, say
    OSError for a port not listening yet) counts as "not yet"."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (QuorumKVError, *ignore) as e:
            last = e
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


_PORT_FLOOR = 20_000
_port_cursor: int | None = None


def _ephemeral_floor() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_block() -> tuple[int, int]:
    """This test process's own ports: below the kernel's ephemeral range, so no outgoing
    connection can take one between our choosing it and the node binding it, and split
    between pytest-xdist workers, so two workers never hand out the same port."""
    top = _ephemeral_floor()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    index = int(worker) if worker.isdigit() else 0
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = (top - _PORT_FLOOR) // workers
    return _PORT_FLOOR + index * size, _PORT_FLOOR + (index + 1) * size


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the nodes bind: a port in TIME_WAIT is reusable, one in use is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing holds now, handed out in turn from this process's
    block (see _port_block) so none is handed out twice in a while."""
    global _port_cursor
    low, high = _port_block()
    if high - low < 4 * count:  # an unusual port range: let the kernel choose
        return _kernel_ports(count)
    if _port_cursor is None:
        # Not always the block's first ports: a previous run's nodes may linger there.
        _port_cursor = low + (os.getpid() * 7919) % (high - low)
    out: list[int] = []
    for _ in range(high - low):
        port = _port_cursor
        _port_cursor = low + (_port_cursor + 1 - low) % (high - low)
        if bindable(port):
            out.append(port)
            if len(out) == count:
                return out
    raise AssertionError(f"no {count} free ports in {low}-{high}")


def _kernel_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class NodeProcess:
    name: str
    data_dir: Path
    peer_port: int
    client_port: int
    args: list[str]
    log_path: Path
    http_port: int | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def http_url(self) -> str:
        assert self.http_port is not None, f"{self.name} serves no HTTP port"
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush anything."""
        if self.running():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen mid-flight, its sockets stay open."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def terminate(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        return self.proc.returncode


@dataclass
class Cluster:
    nodes: list[NodeProcess] = field(default_factory=list)

    @property
    def endpoints(self) -> list[str]:
        return [n.client_address for n in self.nodes]

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def client(self, **kw: object) -> Client:
        return Client(self.endpoints, **kw)  # type: ignore[arg-type]

    def leader_name(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """Wait until some running node reports a leader; return its name."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for n in self.nodes:
                if not n.running():
                    continue
                try:
                    with Client([n.client_address], timeout=2.0) as c:
                        st = c.status()
                    if st.get("leader"):
                        return str(st["leader"])
                except Exception as e:  # not up yet
                    last = e
            time.sleep(0.1)
        raise TimeoutError(f"no leader within {timeout}s (last error: {last!r}); logs: "
                           + ", ".join(str(n.log_path) for n in self.nodes))

    def stop(self) -> None:
        for n in self.nodes:
            n.terminate()

    def add_joiner(self, tmp_path: Path, name: str, *, join: list[str] | None = None,
                   extra: list[str] | None = None) -> NodeProcess:
        """A node that joins this cluster with ``serve --join`` (not started yet); stopped
        with the cluster."""
        peer, client, http = free_ports(3)
        args = [sys.executable, "-m", "quorumkv.cli", "serve", "--name", name,
                "--data-dir", str(tmp_path / name),
                "--peer-listen", f"127.0.0.1:{peer}", "--client-listen", f"127.0.0.1:{client}",
                "--http-listen", f"127.0.0.1:{http}",
                "--join", ",".join(join or self.endpoints), "--tick-ms", "50", *(extra or [])]
        node = NodeProcess(name=name, data_dir=tmp_path / name, peer_port=peer,
                           client_port=client, args=args, log_path=tmp_path / f"{name}.log",
                           http_port=http)
        self.nodes.append(node)
        return node


@contextlib.contextmanager
def running_cluster(tmp_path: Path, size: int = 3, *, extra: list[str] | None = None,
                    data_dirs: dict[str, Path] | None = None,
                    per_node: Callable[[str], list[str]] | None = None) -> Iterator[Cluster]:
    """``data_dirs`` puts some members' data elsewhere (e.g. on a small filesystem);
    ``per_node(name)`` gives a member flags of its own (its certificate, say)."""
    ports = free_ports(3 * size)
    names = [f"n{i + 1}" for i in range(size)]
    initial = ",".join(f"{n}=127.0.0.1:{ports[i]}" for i, n in enumerate(names))
    clients = ",".join(f"{n}=127.0.0.1:{ports[size + i]}" for i, n in enumerate(names))
    cluster = Cluster()
    for i, name in enumerate(names):
        data_dir = (data_dirs or {}).get(name, tmp_path / name)
        args = [sys.executable, "-m", "quorumkv.cli", "serve", "--name", name,
                "--data-dir", str(data_dir),
                "--peer-listen", f"127.0.0.1:{ports[i]}",
                "--client-listen", f"127.0.0.1:{ports[size + i]}",
                "--http-listen", f"127.0.0.1:{ports[2 * size + i]}",
                "--initial-cluster", initial, "--client-urls", clients,
                "--tick-ms", "50", *(extra or []), *(per_node(name) if per_node else [])]
        cluster.nodes.append(NodeProcess(name=name, data_dir=data_dir,
                                         peer_port=ports[i], client_port=ports[size + i],
                                         args=args, log_path=tmp_path / f"{name}.log",
                                         http_port=ports[2 * size + i]))
    try:
        for n in cluster.nodes:
            n.start()
        yield cluster
    finally:
        cluster.stop()
