"""Three-member clusters of each system as real processes on 127.0.0.1, stopped by pid.

Every member gets ports the kernel has just handed out and its own data
directory under the run's temporary directory; every system keeps its
default durability (quorumkv and etcd fsync before acknowledging; PySyncObj
never fsyncs, see pysyncobj_node.py). Members are started in their own
sessions, so a Ctrl-C in the terminal reaches only the coordinator, which
then stops them in order and waits for each to exit.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STOP_TIMEOUT = 15.0
SIZE = 3


def free_ports(count: int) -> list[int]:
    """Ports the kernel just handed out on 127.0.0.1, closed again so a member can bind them."""
    socks: list[socket.socket] = []
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


class ClusterFailed(Exception):
    """A member exited while it should have been serving; the message has its log's tail."""


@dataclass
class Member:
    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env,
                                         start_new_session=True)

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Cluster:
    """A running (or stopped) cluster: its members and the client address of each."""

    label: str
    members: list[Member]
    endpoints: list[str]
    started: bool = field(default=False)

    def start(self) -> None:
        self.started = True
        for m in self.members:
            m.start()

    def check_alive(self) -> None:
        for m in self.members:
            code = m.exited()
            if code is not None:
                raise ClusterFailed(f"{self.label} member {m.name} exited with status {code}; "
                                   f"its log ends:\n{m.log_tail()}")

    def cpu_seconds(self) -> float:
        """User and system CPU time the members have used so far, all threads included."""
        total = 0
        for m in self.members:
            if m.proc is None:
                continue
            try:
                stat = Path(f"/proc/{m.proc.pid}/stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the fields after its closing ')' do not.
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM to every member, then wait for each; SIGKILL any that outstays the timeout."""
        running = [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        for m in running:
            assert m.proc is not None
            os.kill(m.proc.pid, signal.SIGTERM)
        for m in running:
            assert m.proc is not None
            try:
                m.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait(timeout=STOP_TIMEOUT)


def quorumkv_cluster(workdir: Path, *, etcd_api: bool = False,
                     lease_reads: bool = False) -> Cluster:
    """As tests/integration/cluster_harness.py starts one, but with the default tick.
    ``etcd_api``: each member also serves the etcd v3 API, and the endpoints are those.
    ``lease_reads``: the leader serves quorum reads from its lease (docs/consistency.md)."""
    ports = free_ports(4 * SIZE)
    names = [f"n{i + 1}" for i in range(SIZE)]
    initial = ",".join(f"{n}=127.0.0.1:{ports[i]}" for i, n in enumerate(names))
    clients = ",".join(f"{n}=127.0.0.1:{ports[SIZE + i]}" for i, n in enumerate(names))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    members = []
    for i, name in enumerate(names):
        args = [sys.executable, "-m", "quorumkv.cli", "serve", "--name", name,
                "--data-dir", str(workdir / name),
                "--peer-listen", f"127.0.0.1:{ports[i]}",
                "--client-listen", f"127.0.0.1:{ports[SIZE + i]}",
                "--http-listen", f"127.0.0.1:{ports[2 * SIZE + i]}",
                "--initial-cluster", initial, "--client-urls", clients]
        if etcd_api:
            args += ["--etcd-listen", f"127.0.0.1:{ports[3 * SIZE + i]}"]
        if lease_reads:
            args.append("--lease-reads")
        members.append(Member(name=name, args=args, log_path=workdir / f"{name}.log", env=env))
    first = 3 * SIZE if etcd_api else SIZE
    return Cluster(label="quorumkv-lease" if lease_reads else "quorumkv", members=members,
                   endpoints=[f"127.0.0.1:{ports[first + i]}" for i in range(SIZE)])


def etcd_cluster(workdir: Path, etcd: str) -> Cluster:
    ports = free_ports(2 * SIZE)
    names = [f"n{i + 1}" for i in range(SIZE)]
    peer = [f"http://127.0.0.1:{ports[i]}" for i in range(SIZE)]
    client = [f"http://127.0.0.1:{ports[SIZE + i]}" for i in range(SIZE)]
    initial = ",".join(f"{n}={peer[i]}" for i, n in enumerate(names))
    # A fresh token per run: members of an earlier, half-stopped run can never join.
    token = f"compare-{secrets.token_hex(4)}"
    # etcd reads ETCD_* variables as flags and refuses a flag given both ways, so a
    # packaged /etc/default/etcd exported into the shell must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
    members = []
    for i, name in enumerate(names):
        args = [etcd, "--name", name, "--data-dir", str(workdir / name),
                "--listen-peer-urls", peer[i], "--initial-advertise-peer-urls", peer[i],
                "--listen-client-urls", client[i], "--advertise-client-urls", client[i],
                "--initial-cluster", initial, "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn"]
        members.append(Member(name=name, args=args, log_path=workdir / f"{name}.log", env=env))
    return Cluster(label="etcd", members=members,
                   endpoints=[f"127.0.0.1:{ports[SIZE + i]}" for i in range(SIZE)])


def pysyncobj_cluster(workdir: Path, python: str, *, batch: bool) -> Cluster:
    ports = free_ports(2 * SIZE)
    raft = [f"127.0.0.1:{ports[i]}" for i in range(SIZE)]
    members = []
    for i in range(SIZE):
        name = f"n{i + 1}"
        args = [python, str(HERE / "pysyncobj_node.py"), "--self", raft[i],
                "--partners", ",".join(a for j, a in enumerate(raft) if j != i),
                "--client-port", str(ports[SIZE + i]), "--data-dir", str(workdir / name)]
        if not batch:
            args.append("--no-batch")
        members.append(Member(name=name, args=args, log_path=workdir / f"{name}.log",
                              env={**os.environ, "PYTHONUNBUFFERED": "1"}))
    return Cluster(label="pysyncobj" if batch else "pysyncobj-nobatch", members=members,
                   endpoints=[f"127.0.0.1:{ports[SIZE + i]}" for i in range(SIZE)])
