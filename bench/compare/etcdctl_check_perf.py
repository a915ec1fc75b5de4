"""``etcdctl check perf`` against quorumkv's etcd API and against etcd, in one run.

    .venv/bin/python -m bench.compare.etcdctl_check_perf [--loads m,l]

For each system in turn (never both at once): start a 3-member cluster on
127.0.0.1 (quorumkv serving the etcd v3 API on its own port), run Debian's
unmodified ``etcdctl check perf --load=L`` against all three members for each
load, stop the cluster by pid. Then print etcdctl's verdict lines side by
side. etcd comes from Debian's etcd-server (installed as root when missing,
as ``make compare`` does); etcdctl from etcd-client.

etcdctl's loads: s 150 writes/s from 50 clients, m 1,000 from 200, l 8,000
from 500, xl 15,000 from 1,000, each for 60 s; it passes when throughput is
at least 90% of that, the slowest request at most 500 ms and the standard
deviation at most 100 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bench.compare import clusters, install

READY_TIMEOUT_S = 60.0


def etcdctl() -> str:
    found = shutil.which("etcdctl")
    if found is None and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-q", "etcd-client"], check=False,
                       capture_output=True)
        found = shutil.which("etcdctl")
    if found is None:
        raise SystemExit("etcdctl is missing: install Debian's etcd-client")
    return found


def _ctl(tool: str, endpoints: list[str], *args: str, timeout: float
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run([tool, "--endpoints", ",".join(endpoints), *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _wait_ready(tool: str, cluster: clusters.Cluster) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        cluster.check_alive()
        if _ctl(tool, cluster.endpoints, "put", "check-perf-ready", "1",
                timeout=10).returncode == 0:
            return
        time.sleep(0.5)
    raise clusters.ClusterFailed(f"{cluster.label} took no write within {READY_TIMEOUT_S} s")


def measure(label: str, make: clusters.Cluster, tool: str, loads: list[str]
            ) -> dict[str, str]:
    out: dict[str, str] = {}
    cluster = make
    try:
        cluster.start()
        _wait_ready(tool, cluster)
        for load in loads:
            done = _ctl(tool, cluster.endpoints, "check", "perf", f"--load={load}",
                        timeout=600)
            out[load] = (done.stdout + done.stderr).strip()
            print(f"--- {label}, --load={load} (exit {done.returncode})\n{out[load]}\n",
                  flush=True)
    finally:
        cluster.stop()
    return out


def _verdict(text: str) -> str:
    if not text:
        return "(no output)"
    # etcdctl words a failed latency check without a PASS/FAIL prefix.
    lines = [ln for ln in text.splitlines()
             if "PASS" in ln or "FAIL" in ln or ln.startswith(("Slowest", "Stddev"))]
    return "; ".join(lines) or text.splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", default="m,l")
    args = parser.parse_args()
    loads = [x for x in args.loads.split(",") if x]
    tool = etcdctl()
    etcd = install.ensure_etcd()
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="check-perf-") as tmp:
        root = Path(tmp)
        (root / "etcd").mkdir()
        (root / "quorumkv").mkdir()
        results["etcd"] = measure("etcd", clusters.etcd_cluster(root / "etcd", etcd), tool,
                                  loads)
        results["quorumkv"] = measure(
            "quorumkv", clusters.quorumkv_cluster(root / "quorumkv", etcd_api=True), tool,
            loads)
    print(f"etcdctl check perf: quorumkv beside etcd {install.etcd_version(etcd)}, "
          f"3 members each on this machine:")
    for load in loads:
        for system in ("quorumkv", "etcd"):
            print(f"  --load={load:2} {system:8} {_verdict(results[system][load])}")


if __name__ == "__main__":
    main()
