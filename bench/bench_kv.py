"""How fast the state machine applies committed puts, by batch size.

    .venv/bin/python bench/bench_kv.py [--dir DIR] [--seconds N]

Applies 16-byte keys with 128-byte values to a durable KVStore (LMDB) in
batches of 1, 16 and 256 entries per ``apply_batch`` (one LMDB write
transaction, hence one data flush, per batch), and prints puts/s with the
p50/p99 latency of one batch. Put ``--dir`` on the disk a node would use.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from quorumkv.kv import KVStore, Payload, Put

BATCH_SIZES = (1, 16, 256)
KEY_SPACE = 100_000


def percentile_ms(sorted_ns: list[int], p: float) -> float:
    if not sorted_ns:
        return float("nan")
    k = min(len(sorted_ns) - 1, max(0, round(p / 100 * len(sorted_ns)) - 1))
    return sorted_ns[k] / 1e6


def run(directory: Path, batch: int, seconds: float) -> tuple[float, list[int]]:
    path = directory / f"kv-{batch}"
    shutil.rmtree(path, ignore_errors=True)
    store = KVStore.open(path, map_size=1 << 30)
    value = b"v" * 128
    index = 0
    latencies: list[int] = []
    applied = 0
    started = time.perf_counter()
    deadline = started + seconds
    try:
        while time.perf_counter() < deadline:
            entries: list[tuple[int, int, Payload]] = []
            for _ in range(batch):
                index += 1
                key = b"key-%012d" % (index % KEY_SPACE)
                entries.append((index, 1, Put(key=key, value=value, timestamp=index)))
            t0 = time.perf_counter_ns()
            store.apply_batch(entries)
            latencies.append(time.perf_counter_ns() - t0)
            applied += batch
        elapsed = time.perf_counter() - started
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
    return applied / elapsed, sorted(latencies)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="quorumkv-bench-kv-"))
    base.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for batch in BATCH_SIZES:
            print(f"... batch {batch}: {args.seconds:.0f} s", file=sys.stderr, flush=True)
            rate, lat = run(base, batch, args.seconds)
            rows.append((batch, rate, percentile_ms(lat, 50), percentile_ms(lat, 99)))
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(f"{'state machine apply (puts)':<28} {'batch':>6} {'puts/s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for batch, rate, p50, p99 in rows:
        print(f"{'KVStore.apply_batch':<28} {batch:>6} {rate:>10,.0f} {p50:>8.2f} {p99:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
