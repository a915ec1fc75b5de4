"""`make compare`'s quorumkv path end to end, briefly: a real cluster, real load processes.

The etcd and PySyncObj paths need Debian and PyPI downloads, so they run
only under `make compare`. No timing is asserted: the machine is shared.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.compare.report import parse_table

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ("put", "get", "get-one")
CLIENTS = (1, 4)


def test_quorumkv_only_run_prints_a_table_with_load_and_no_errors(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "performance.md"
    before = doc.read_text() if doc.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "bench.compare", "--systems", "quorumkv",
         "--duration", "1", "--warmup", "0.5", "--concurrency", ",".join(map(str, CLIENTS)),
         "--keys", "200", "--data-root", str(tmp_path), "--no-write-doc"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = parse_table(done.stdout)
    # quorumkv-lease (--lease-reads) runs the linearizable get only.
    assert [(r["system"], r["workload"], int(r["clients"])) for r in rows] == [
        (s, w, c) for w in WORKLOADS for c in CLIENTS
        for s in (("quorumkv", "quorumkv-lease") if w == "get" else ("quorumkv",))]
    for row in rows:
        assert float(row["ops/s"]) > 0, row
        assert int(row["errors"]) == 0, row
        assert 0 < float(row["p50 ms"]) <= float(row["p99 ms"]), row
    # The run cleaned up after itself and left the document alone.
    assert list(tmp_path.iterdir()) == []
    assert (doc.read_text() if doc.exists() else None) == before
