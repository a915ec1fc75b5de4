"""``make compare``: quorumkv, etcd and PySyncObj measured on this machine in one run.

    .venv/bin/python -m bench.compare [--duration 10] [--warmup 2]
        [--concurrency 1,16,64] [--workloads put,get,get-one]
        [--systems quorumkv,etcd,pysyncobj] [--procs 1] [--no-write-doc]

Run it from the repository root, with the project's venv. For each system,
in turn (never two at once, so they do not share the cores): install what it
needs, start a 3-member cluster on 127.0.0.1, wait until every member takes
writes, write every key once, then measure each workload at each
concurrency with ``--procs`` load processes (``loadgen.py``), stop the
cluster and wait for its processes to exit. Then print one table, with
quorumkv's throughput divided by each other system's for the same workload
and concurrency, and write it into docs/performance.md between its markers.

``pysyncobj`` runs twice: with the library's defaults, and as
``pysyncobj-nobatch`` with ``appendEntriesUseBatch=False`` (each command is
sent to the followers at once instead of on the next 0.1 s append period).

The design follows etcd's ``benchmark`` tool (many clients sharing a few
connections, a latency histogram per run) and redis-benchmark (closed loop,
fixed key and value sizes, a uniformly drawn key space).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from bench.compare import clusters, install, report
from bench.compare.histogram import Measurement, merge
from bench.compare.loadgen import WORKLOADS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"
SYSTEMS = ("quorumkv", "etcd", "pysyncobj")
START_SLACK_S = 0.2
"""Between the start signal and the first worker, so every process has it before load begins."""
REQUEST_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    adapter: str
    python: str
    make: Callable[[Path], clusters.Cluster]
    workloads: tuple[str, ...] | None = None
    """The only workloads it runs (those a setting changes); None: all."""


class Failure(Exception):
    """A measurement or a cluster failed; the message carries the logs' tails."""


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C or SIGTERM waits until the block is done, so a stop is never cut short."""
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise KeyboardInterrupt(f"signal {received[0]}")


# -- load processes ---------------------------------------------------------------------------

class LineReader:
    """JSON lines from a child's stdout with a deadline (a child may hang or die)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self._proc = proc
        self._fd = proc.stdout.fileno()
        self._buffer = b""

    def next(self, deadline: float) -> dict[str, Any]:
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                with contextlib.suppress(ValueError):
                    obj = json.loads(line)
                    if isinstance(obj, dict):
                        return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Failure("a load process did not answer in time")
            readable, _, _ = select.select([self._fd], [], [], remaining)
            if readable:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    raise Failure(f"a load process exited (status {self._proc.wait()})")
                self._buffer += chunk


def loadgen_command(variant: Variant, endpoints: Sequence[str], extra: Sequence[str],
                    args: argparse.Namespace) -> list[str]:
    return [variant.python, "-m", "bench.compare.loadgen", "--system", variant.adapter,
            "--endpoints", ",".join(endpoints), "--keys", str(args.keys),
            "--timeout", str(REQUEST_TIMEOUT_S), *extra]


@contextlib.contextmanager
def load_processes(commands: Sequence[list[str]], log_dir: Path) -> Iterator[
        list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, command in enumerate(commands):
            with open(log_dir / f"loadgen-{i}.log", "ab") as log:
                procs.append(subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, stderr=log,
                                              start_new_session=True))
        yield procs
    finally:
        with signals_deferred():
            stop_all(procs)


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to those still running, then wait for each; SIGKILL any that outstays 10 s."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        for stream in (p.stdin, p.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def log_tails(log_dir: Path, pattern: str) -> str:
    parts = []
    for path in sorted(log_dir.glob(pattern)):
        lines = path.read_text(errors="replace").splitlines()[-10:]
        if lines:
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
    return "\n".join(parts)


def prefill(variant: Variant, cluster: clusters.Cluster, args: argparse.Namespace,
            log_dir: Path) -> None:
    command = loadgen_command(variant, cluster.endpoints,
                              ["--prefill", "--ready-timeout", str(READY_TIMEOUT_S)], args)
    with load_processes([command], log_dir) as (proc,):
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            LineReader(proc).next(time.monotonic() + READY_TIMEOUT_S + 120)
        except Failure as e:
            cluster.check_alive()
            raise Failure(f"{variant.label}: the cluster did not come up or take the keys "
                          f"({e})\n{log_tails(log_dir, 'loadgen-*.log')}") from None


def split(clients: int, procs: int) -> list[tuple[int, int]]:
    """(workers, global offset of the first) per load process; no process gets none."""
    n = max(1, min(procs, clients))
    shares = [clients // n + (1 if i < clients % n else 0) for i in range(n)]
    offsets = [sum(shares[:i]) for i in range(n)]
    return list(zip(shares, offsets, strict=True))


def measure(variant: Variant, cluster: clusters.Cluster, workload: str, clients: int,
            args: argparse.Namespace, log_dir: Path) -> tuple[Measurement, float]:
    """The merged measurement, and the CPU seconds the cluster used in its window."""
    commands = [loadgen_command(variant, cluster.endpoints,
                                ["--workload", workload, "--workers", str(w),
                                 "--worker-offset", str(off)], args)
                for w, off in split(clients, args.procs)]
    with load_processes(commands, log_dir) as procs:
        readers = [LineReader(p) for p in procs]
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            for r in readers:
                r.next(deadline)
            # Every process is connected: only now does the shared window start.
            measure_at = time.time() + START_SLACK_S + args.warmup
            end_at = measure_at + args.duration
            control = (json.dumps({"measure_at": measure_at, "end_at": end_at}) + "\n").encode()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(control)
                p.stdin.close()
            # The cluster's CPU over the same window, for the cost of one operation.
            time.sleep(max(measure_at - time.time(), 0.0))
            server_cpu = -cluster.cpu_seconds()
            time.sleep(max(end_at - time.time(), 0.0))
            server_cpu += cluster.cpu_seconds()
            deadline = time.monotonic() + START_SLACK_S + args.warmup + args.duration \
                + REQUEST_TIMEOUT_S + 30
            parts = [Measurement.from_json(r.next(deadline)["result"]) for r in readers]
            for p in procs:  # each prints its result, closes its connections, and exits
                p.wait(timeout=30)
        except (Failure, subprocess.TimeoutExpired, BrokenPipeError) as e:
            cluster.check_alive()
            raise Failure(f"{variant.label} {workload} x{clients}: {e}\n"
                          f"{log_tails(log_dir, 'loadgen-*.log')}") from None
    return merge(parts), server_cpu


# -- the run ----------------------------------------------------------------------------------

def variants(systems: Sequence[str], pysyncobj_variants: Sequence[str],
             quorumkv_variants: Sequence[str] = ("default", "lease")) -> list[Variant]:
    """What runs, installing each system's needs first (nothing for quorumkv alone)."""
    out: list[Variant] = []
    peer_python = (install.ensure_peer_venv()
                   if any(s in systems for s in ("etcd", "pysyncobj")) else "")
    for system in systems:
        if system == "quorumkv":
            if "default" in quorumkv_variants:
                out.append(Variant("quorumkv", "quorumkv", sys.executable,
                                   clusters.quorumkv_cluster))
            if "lease" in quorumkv_variants:
                # The lease changes linearizable reads only.
                out.append(Variant("quorumkv-lease", "quorumkv", sys.executable,
                                   partial(clusters.quorumkv_cluster, lease_reads=True),
                                   workloads=("get",)))
        elif system == "etcd":
            etcd = install.ensure_etcd()
            out.append(Variant("etcd", "etcd", peer_python,
                               partial(clusters.etcd_cluster, etcd=etcd)))
        elif system == "pysyncobj":
            for kind in pysyncobj_variants:
                batch = kind == "default"
                out.append(Variant("pysyncobj" if batch else "pysyncobj-nobatch", "pysyncobj",
                                   peer_python, partial(clusters.pysyncobj_cluster,
                                                        python=peer_python, batch=batch)))
    return out


def run_variant(variant: Variant, args: argparse.Namespace, workdir: Path,
                progress: Callable[[str], None]) -> list[report.Row]:
    vdir = workdir / variant.label
    vdir.mkdir()
    cluster = variant.make(vdir)
    rows = []
    try:
        cluster.start()
        progress(f"{variant.label}: cluster of 3 starting, prefilling {args.keys} keys")
        prefill(variant, cluster, args, vdir)
        for workload in args.workloads:
            if variant.workloads is not None and workload not in variant.workloads:
                continue
            for clients in args.concurrency:
                m, server_cpu = measure(variant, cluster, workload, clients, args, vdir)
                per_op = 1e6 / m.ops if m.ops else 0.0
                row = report.Row(system=variant.label, workload=workload, clients=clients,
                                 ops_per_s=m.ops_per_s, p50_ms=m.histogram.percentile_ms(50),
                                 p99_ms=m.histogram.percentile_ms(99), errors=m.error_count,
                                 server_cpu_us=server_cpu * per_op,
                                 client_cpu_us=m.client_cpu_s * per_op)
                rows.append(row)
                errors = (", errors " + ", ".join(f"{k} {v}" for k, v in m.errors.items())
                          if m.errors else "")
                progress(f"{variant.label:<17} {workload:<7} x{clients:<3} "
                         f"{row.ops_per_s:8.0f} ops/s  p50 {row.p50_ms:6.2f} ms  "
                         f"p99 {row.p99_ms:6.2f} ms  CPU/op {row.server_cpu_us:5.0f} us "
                         f"cluster, {row.client_cpu_us:4.0f} us client{errors}")
        cluster.check_alive()
    finally:
        with signals_deferred():
            cluster.stop()
    return rows


NOTES = """\
Notes:

- ops/s counts the requests that started and finished inside the measured
  window, over all load processes; p50 and p99 come from their merged
  latency histograms (within 0.8 %). The quorumkv/... columns divide
  quorumkv's ops/s by the other system's for the same workload and number of
  clients: above 1, quorumkv served more.
- cluster CPU µs/op is the user and system CPU time of the three members
  during the window divided by the operations in it; client CPU µs/op is
  the same for the load processes. Clusters and load share the machine's
  cores, so where the cores are saturated these two explain the ops/s. At
  low rates the clusters' idle work (heartbeats, timers) weighs on the
  cluster figure.
- Clients are closed-loop (each waits for its answer before the next
  request) and spread round robin over the 3 members, 8 to a connection;
  a single client talks to the first member, which may or may not be the
  leader (each cluster elects its own).
  Keys are {key_size}-byte, drawn uniformly from {keys}; values are {value_size}
  bytes; every key is written once before the first measurement.
- put: quorumkv consistency quorum (a follower redirects the client to the
  leader); etcd Put (a follower forwards it to the leader); PySyncObj a
  replicated call answered by callback after commit (a follower forwards it).
- get, linearizable: quorumkv consistency quorum and etcd's default Range,
  both ReadIndex. PySyncObj has no linearizable read without a log write, so
  its get is a replicated call through the log: a write's cost.
- quorumkv-lease: quorumkv with --lease-reads (docs/consistency.md), whose
  leader serves quorum gets from its lease, without a heartbeat round; only
  the linearizable get is run, as nothing else changes.
- get-one: quorumkv consistency one, etcd serializable Range, PySyncObj a
  read of the member's local copy; all may be stale on a follower.
- Durability: quorumkv and etcd fsync before acknowledging a write.
  PySyncObj's journal is a memory-mapped file the library never syncs, so
  its writes are acknowledged before they are on disk.
- pysyncobj runs with the library's defaults (commands batched into the
  leader's 0.1 s append period); pysyncobj-nobatch sets
  appendEntriesUseBatch=False (each command sent at once).
- The load generator is Python for every system (quorumkv's AsyncClient;
  aetcd on grpc.aio; a msgpack client for the PySyncObj node script) and
  shares the cores with the clusters, so each client library's cost is part
  of its system's figures; the client CPU column shows how large a part.
"""


def doc_block(rows: Sequence[report.Row], args: argparse.Namespace, machine: list[str],
              versions: list[str], command: str) -> str:
    today = datetime.date.today().isoformat()
    lines = [f"## Comparison run of {today}", "",
             *(f"- {line}" for line in machine),
             f"- Versions: {'; '.join(versions)}",
             f"- Command: `{command}`",
             f"- {args.warmup:g} s warm-up and {args.duration:g} s measured per row; "
             f"{args.procs} load process{'es' if args.procs > 1 else ''} per row at most",
             "", report.render_table(rows), "",
             NOTES.format(key_size=16, keys=args.keys, value_size=128)]
    return "\n".join(lines)


def collect_versions(variants_run: Sequence[Variant]) -> list[str]:
    versions = []
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    qkv = importlib.metadata.version("quorumkv")
    versions.append(f"quorumkv {qkv}" + (f" (commit {commit})" if commit else ""))
    labels = {v.label for v in variants_run}
    peer = next((v.python for v in variants_run if v.adapter != "quorumkv"), None)
    peer_v = install.peer_versions(peer) if peer else {}
    if "etcd" in labels:
        etcd = install.ensure_etcd()
        versions.append(f"etcd {install.etcd_version(etcd)} (Debian etcd-server), client "
                        f"aetcd {peer_v.get('aetcd', '?')} on grpcio {peer_v.get('grpcio', '?')}")
    if labels & {"pysyncobj", "pysyncobj-nobatch"}:
        versions.append(f"PySyncObj {peer_v.get('pysyncobj', '?')}")
    versions.append(f"Python {platform.python_version()}")
    return versions


def csv_list(kind: type, choices: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(x.strip()) for x in text.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        for item in items:
            if choices is not None and item not in choices:
                raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(choices)}")
            if kind is int and item < 1:
                raise argparse.ArgumentTypeError("values must be at least 1")
        return list(dict.fromkeys(items))
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compare",
        description="Measure quorumkv beside etcd and PySyncObj on this machine.")
    parser.add_argument("--duration", type=float, default=10.0,
                        help="seconds measured per workload and concurrency [10]")
    parser.add_argument("--warmup", type=float, default=2.0,
                        help="seconds of load before each measurement [2]")
    parser.add_argument("--concurrency", type=csv_list(int), default=[1, 16, 64],
                        help="concurrent clients, comma separated [1,16,64]")
    parser.add_argument("--workloads", type=csv_list(str, WORKLOADS),
                        default=list(WORKLOADS), help="put,get,get-one [all]")
    parser.add_argument("--systems", type=csv_list(str, SYSTEMS), default=list(SYSTEMS),
                        help="quorumkv,etcd,pysyncobj [all]")
    parser.add_argument("--pysyncobj-variants", type=csv_list(str, ("default", "nobatch")),
                        default=["default", "nobatch"],
                        help="PySyncObj's configurations: default,nobatch [both]")
    parser.add_argument("--quorumkv-variants", type=csv_list(str, ("default", "lease")),
                        default=["default", "lease"],
                        help="quorumkv's configurations: default, and lease (--lease-reads, "
                             "linearizable gets only) [both]")
    parser.add_argument("--procs", type=int, default=1,
                        help="load processes per measurement (one Python process tops out "
                             "near 12-15k requests/s) [1]")
    parser.add_argument("--keys", type=int, default=1000, help="size of the key space [1000]")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="where the clusters keep their data [the system's temp dir]; "
                             "not a tmpfs, or fsync costs nothing")
    parser.add_argument("--no-write-doc", action="store_true",
                        help="print the table only; leave docs/performance.md alone")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.procs < 1 or args.keys < 1:
        parser.error("--duration must be positive, --warmup not negative, "
                     "--procs and --keys at least 1")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turned into the same path as Ctrl-C, so every finally stops its processes.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.compare",
                          *(sys.argv[1:] if argv is None else argv)])
    # Explicitly, for SIGINT too: a shell starts a background job with SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler of its own.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        to_run = variants(args.systems, args.pysyncobj_variants, args.quorumkv_variants)
    except install.SetupError as e:
        raise SystemExit(f"setup failed: {e}") from None
    data_root = args.data_root or Path(tempfile.gettempdir())
    workdir = Path(tempfile.mkdtemp(prefix="quorumkv-compare-", dir=data_root))
    rows: list[report.Row] = []
    failures: list[str] = []
    try:
        machine = report.machine_lines(data_root, workdir)
        for variant in to_run:
            try:
                rows.extend(run_variant(variant, args, workdir, progress))
            except (Failure, clusters.ClusterFailed) as e:
                failures.append(str(e))
                progress(f"FAILED: {e}")
    except KeyboardInterrupt:
        progress("interrupted: every process has been stopped")
        raise SystemExit(130) from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = report.render_table(rows)
    print(table)
    if failures:
        raise SystemExit(f"{len(failures)} system(s) failed; docs/performance.md left alone")
    if not args.no_write_doc:
        block = doc_block(rows, args, machine, collect_versions(to_run), command)
        report.write_doc(DOC, block)
        progress(f"wrote the table into {DOC.relative_to(ROOT)}")
