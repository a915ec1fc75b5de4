"""The comparison's table, the machine it ran on, and its block in docs/performance.md."""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"
BASELINE = "quorumkv"
FSYNC_PROBE_S = 1.0

DOC_INTRO = """\
# Performance

How quorumkv compares with etcd and PySyncObj, two other Raft-replicated
stores, measured on one machine in one run by `make compare` (see
`bench/compare/`). Each system runs as a 3-member cluster on 127.0.0.1 with
its default durability, and the same closed-loop load generator drives all
of them through each system's own client; the load generator shares the
machine's cores with the clusters, so the absolute figures say more about
the machine than about any system, and the ratios are the point.

The section between the markers below is rewritten by every run of
`make compare` (`--no-write-doc` leaves it alone); text outside it is kept.

"""


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    system: str
    """The variant's label: quorumkv, etcd, pysyncobj, pysyncobj-nobatch."""
    workload: str
    clients: int
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu_us: float = 0.0
    """CPU time of all three members per operation (microseconds)."""
    client_cpu_us: float = 0.0
    """CPU time of the load processes per operation (microseconds)."""


HEADERS = ("system", "workload", "clients", "ops/s", "p50 ms", "p99 ms", "errors",
           "cluster CPU µs/op", "client CPU µs/op")


def ratio_header(other: str) -> str:
    return f"{BASELINE}/{other}"


def _is_ours(system: str) -> bool:
    """quorumkv, or one of its configurations (quorumkv-lease): rows that get ratios."""
    return system == BASELINE or system.startswith(BASELINE + "-")


def render_table(rows: Sequence[Row]) -> str:
    """One markdown table; quorumkv's rows carry its ops/s divided by each other system's.

    Rows come grouped by workload and concurrency, so each ratio sits beside
    the two rows it divides.
    """
    systems = list(dict.fromkeys(r.system for r in rows))
    ours = [s for s in systems if _is_ours(s)]
    others = [s for s in systems if not _is_ours(s)] if ours else []
    headers = [*HEADERS, *(ratio_header(s) for s in others)]
    by_key = {(r.system, r.workload, r.clients): r for r in rows}
    workloads = list(dict.fromkeys(r.workload for r in rows))
    clients = sorted({r.clients for r in rows})
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|"]
    for workload in workloads:
        for c in clients:
            for system in systems:
                r = by_key.get((system, workload, c))
                if r is None:
                    continue
                cells = [r.system, r.workload, str(r.clients), f"{r.ops_per_s:.0f}",
                         f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}", str(r.errors),
                         f"{r.server_cpu_us:.0f}", f"{r.client_cpu_us:.0f}"]
                for other in others:
                    o = by_key.get((other, workload, c))
                    if _is_ours(system) and o is not None and o.ops_per_s > 0:
                        cells.append(f"{r.ops_per_s / o.ops_per_s:.2f}")
                    else:
                        cells.append("")
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in ``text``, as header -> cell."""
    table: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("|") and line.endswith("|"):
            table.append([cell.strip() for cell in line[1:-1].split("|")])
        elif table:
            break
    if len(table) < 2:
        return []
    headers, body = table[0], table[2:]
    return [dict(zip(headers, cells, strict=True)) for cells in body]


# -- the machine ------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0.0


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (the longest matching mount point)."""
    best, kind = "", "unknown"
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return kind
    target = str(path.resolve())
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def fsync_rate(directory: Path, seconds: float = FSYNC_PROBE_S) -> float:
    """Small appends each followed by fdatasync, per second: the ceiling on commits
    that each wait for their own flush (group commit is how all three systems go past it)."""
    fd, name = tempfile.mkstemp(prefix="fsync-probe-", dir=directory)
    try:
        block = b"x" * 4096
        count = 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            os.write(fd, block)
            os.fdatasync(fd)
            count += 1
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(name)


def machine_lines(data_root: Path, probe_dir: Path) -> list[str]:
    """``probe_dir`` (inside ``data_root``, on the clusters' disk) is where fsync is timed."""
    load1, load5, _ = os.getloadavg()
    return [
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; {memory_gib():.0f} GiB memory",
        f"Kernel: Linux {platform.release()}",
        f"Disk: {fsync_rate(probe_dir):.0f} fdatasync/s for 4 KiB appends under {data_root} "
        f"({filesystem_of(probe_dir)}), where the clusters keep their data",
        f"Load average when the run started: {load1:.2f} (1 min), {load5:.2f} (5 min)",
    ]


# -- docs/performance.md ----------------------------------------------------------------------

def replace_block(text: str, block: str) -> str:
    """``text`` with the generated block replaced, or appended if it has none yet."""
    generated = f"{BEGIN}\n{block.rstrip()}\n{END}"
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start >= 0 and end >= 0:
        return text[:start] + generated + text[end + len(END):]
    return text.rstrip("\n") + "\n\n" + generated + "\n"


def write_doc(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else DOC_INTRO
    path.write_text(replace_block(text, block))
