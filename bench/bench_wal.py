"""How fast the write-ahead log commits, against what the disk itself allows.

    .venv/bin/python bench/bench_wal.py [--dir DIR] [--seconds N]

Measures, in one run:

1. the record checksum (zlib.crc32) per 128-byte record and in bulk, and
   CRC-32C for comparison when the ``crc32c`` package happens to be installed;
2. the disk's raw commit rate: a loop of write(128 bytes) + fdatasync, and
   the same with fsync;
3. WriteAheadLog throughput for 128-byte entries at batch sizes 1, 16 and
   256, one ``sync()`` per batch (group commit).

Every timed phase runs for ``--seconds`` in all (default 3: about 16 s for
the run), split into ``--rounds`` turns taken round robin, so a disk whose
speed drifts (a shared or throttled volume) affects every row alike.
Put ``--dir`` on the disk a node would use: a tmpfs makes fsync free and
the figures meaningless.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from quorumkv.raft.entries import Entry
from quorumkv.storage import WriteAheadLog

ENTRY_SIZE = 128

fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)
BATCH_SIZES = (1, 16, 256)


def progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


def percentile(sorted_ns: list[int], p: float) -> float:
    """The p-th percentile in milliseconds (nearest rank)."""
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(p / 100 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e6


def timed_loop(seconds: float, op: Callable[[], None]) -> list[int]:
    """Run ``op`` repeatedly for ``seconds``; return each call's latency in ns."""
    latencies: list[int] = []
    deadline = time.perf_counter_ns() + int(seconds * 1e9)
    while True:
        t0 = time.perf_counter_ns()
        op()
        t1 = time.perf_counter_ns()
        latencies.append(t1 - t0)
        if t1 >= deadline:
            return latencies


def bench_checksums() -> list[str]:
    record = os.urandom(ENTRY_SIZE + 26)
    bulk = os.urandom(1 << 20)
    lines = []
    candidates: list[tuple[str, Callable[[bytes, int], int]]] = [("zlib.crc32", zlib.crc32)]
    try:
        mod = importlib.import_module("crc32c")
        candidates.append(("crc32c.crc32c", mod.crc32c))
    except ImportError:
        pass
    for name, fn in candidates:
        n = 200_000
        t0 = time.perf_counter()
        for _ in range(n):
            fn(record, 0)
        per_record_ns = (time.perf_counter() - t0) / n * 1e9
        t0 = time.perf_counter()
        for _ in range(200):
            fn(bulk, 0)
        gbps = 200 * len(bulk) / (time.perf_counter() - t0) / 1e9
        lines.append(f"{name:<14} {per_record_ns:7.0f} ns per {len(record)}-byte record, "
                     f"{gbps:6.2f} GB/s in bulk")
    return lines


class RawSync:
    """The disk alone: append 128 bytes to a file and sync it."""

    def __init__(self, directory: Path, name: str, sync: Callable[[int], None]) -> None:
        self.path = directory / name
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.sync = sync
        self.payload = os.urandom(ENTRY_SIZE)

    def op(self) -> None:
        os.write(self.fd, self.payload)
        self.sync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class WalBatches:
    """The log: append ``batch`` entries of 128 bytes, then one sync()."""

    def __init__(self, directory: Path, batch: int) -> None:
        self.wal = WriteAheadLog.open(directory / f"wal-{batch}")
        self.batch = batch
        self.data = os.urandom(ENTRY_SIZE)
        self.next_index = 1

    def op(self) -> None:
        first = self.next_index
        self.wal.append([Entry(term=1, index=i, data=self.data)
                         for i in range(first, first + self.batch)])
        self.wal.sync()
        self.next_index += self.batch

    def close(self) -> None:
        self.wal.close()


def filesystem_of(path: Path) -> str:
    """The file-system type holding ``path`` (Linux only; '?' elsewhere)."""
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                mount_point = fields[1]
                if str(path.resolve()).startswith(mount_point) and len(mount_point) > len(best):
                    best, fstype = mount_point, fields[2]
    except OSError:
        pass
    return fstype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="where to write (default: a new temporary directory)")
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="total duration of each timed phase (default 3)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="turns each phase's time is split into (default 6)")
    args = parser.parse_args()
    if args.dir is None:
        base = Path(tempfile.mkdtemp(prefix="quorumkv-bench-wal-"))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="bench-wal-", dir=args.dir))
    fstype = filesystem_of(base)
    print(f"directory {base} (file system: {fstype}), {args.seconds:g} s per phase "
          f"in {args.rounds} turns")
    if fstype in ("tmpfs", "ramfs"):
        print("WARNING: this directory is in memory; fsync costs nothing here")
    try:
        progress("checksums")
        for line in bench_checksums():
            print(line)
        phases: list[tuple[str, int, RawSync | WalBatches]] = [
            ("raw write+fdatasync", 1, RawSync(base, "raw-fdatasync", fdatasync)),
            ("raw write+fsync", 1, RawSync(base, "raw-fsync", os.fsync)),
        ]
        phases += [("WAL append+sync", b, WalBatches(base, b)) for b in BATCH_SIZES]
        rows: list[tuple[str, int, list[int]]] = [(what, b, []) for what, b, _ in phases]
        # Shared disks change speed from one second to the next, so every phase
        # runs in short turns, round robin, and each row sees the same weather.
        for turn in range(args.rounds):
            progress(f"round {turn + 1} of {args.rounds}")
            for (_, _, phase), (_, _, latencies) in zip(phases, rows, strict=True):
                latencies.extend(timed_loop(args.seconds / args.rounds, phase.op))
        for _, _, phase in phases:
            phase.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print()
    print(f"{'what':<20} {'batch':>5} {'syncs/s':>9} {'entries/s':>10} {'MB/s':>7} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'samples':>8}")
    for what, batch, latencies in rows:
        total_s = sum(latencies) / 1e9
        syncs = len(latencies) / total_s
        latencies.sort()
        print(f"{what:<20} {batch:>5} {syncs:>9.0f} {syncs * batch:>10.0f} "
              f"{syncs * batch * ENTRY_SIZE / 1e6:>7.2f} {percentile(latencies, 50):>7.3f} "
              f"{percentile(latencies, 99):>7.3f} {len(latencies):>8}")
    print(f"(entries of {ENTRY_SIZE} bytes; latency is per batch: append + sync)")


if __name__ == "__main__":
    main()
