"""How the failure detector behaves on a real cluster: false alarms under load, detection time.

    .venv/bin/python bench/bench_failure_detector.py [--duration S] [--poll-ms MS] [--dir DIR]

Starts a real three-node cluster on 127.0.0.1 (the integration tests' process
harness) with the default detector settings and the default 100 ms tick, and
runs a write load (puts in a loop from a client thread) throughout.

1. For ``--duration`` seconds (default 180) it asks every node for its status
   every ``--poll-ms`` (default 200) and counts the answers in which some
   member other than the answering node is not "active": with every node
   alive, each is a false positive. It keeps the highest phi reported.
2. It freezes one follower (SIGSTOP) and measures how long until the leader
   (and the other follower) first report it "inactive" and "failed"; then
   resumes it (SIGCONT) and measures how long until it is "active" again.
   Those polls are every ``--detect-poll-ms`` (default 50), which bounds the
   resolution of the times.

Every process is stopped by its pid at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration"))

from cluster_harness import Cluster, NodeProcess, running_cluster

from quorumkv.client import Client
from quorumkv.errors import QuorumKVError
from quorumkv.server.config import NodeConfig

THRESHOLDS = ("suspect_phi", "failed_phi", "failed_after_s", "acceptable_pause_s",
              "min_heartbeat_std_s",
              "health_interval_ms", "tick_ms")
TICK_MS = 100
VALUE = b"v" * 128


def progress(msg: str) -> None:
    print(f"... {msg}", file=sys.stderr, flush=True)


def default(name: str) -> Any:
    return next(f.default for f in dataclasses.fields(NodeConfig) if f.name == name)


class WriteLoad:
    """Puts in a loop from a background thread until stopped."""

    def __init__(self, endpoints: list[str]) -> None:
        self._client = Client(endpoints, timeout=10.0)
        self._stop = threading.Event()
        self.puts = 0
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="write-load", daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                self._client.put(b"load/%06d" % (i % 1000), VALUE)
                self.puts += 1
            except QuorumKVError:
                self.errors += 1

    def __enter__(self) -> WriteLoad:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._client.close()


@dataclasses.dataclass
class Quiet:
    """Observations of a healthy cluster."""

    answers: int = 0
    false_positive_answers: int = 0
    false_positive_pairs: int = 0
    pairs: int = 0
    poll_errors: int = 0
    max_phi: float = -1.0
    max_phi_pair: str = "-"
    max_last_seen: float = 0.0
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    """How often each non-active status was reported, as 'observer->member: status'."""


def status(client: Client) -> dict[str, Any]:
    return client.status(local=True)


def wait_all_active(cluster: Cluster, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ok = True
            for n in cluster.nodes:
                with Client([n.client_address], timeout=5.0) as c:
                    st = status(c)
                ok = ok and len(st["members"]) == len(cluster.nodes) and all(
                    m["status"] == "active" for m in st["members"])
            if ok:
                return
        except QuorumKVError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the cluster did not become all active within {timeout} s")


def observe_quiet(cluster: Cluster, duration: float, poll: float) -> Quiet:
    out = Quiet()
    clients = {n.name: Client([n.client_address], timeout=2.0) for n in cluster.nodes}
    try:
        deadline = time.monotonic() + duration
        next_poll = time.monotonic()
        last_report = time.monotonic()
        while time.monotonic() < deadline:
            for name, client in clients.items():
                try:
                    st = status(client)
                except QuorumKVError:
                    out.poll_errors += 1
                    continue
                out.answers += 1
                bad = False
                for m in st["members"]:
                    if m["name"] == name:
                        continue
                    out.pairs += 1
                    if m["phi"] is not None and m["phi"] > out.max_phi:
                        out.max_phi = m["phi"]
                        out.max_phi_pair = f"{name}->{m['name']}"
                    if m["last_seen"] is not None:
                        out.max_last_seen = max(out.max_last_seen, m["last_seen"])
                    if m["status"] != "active":
                        bad = True
                        out.false_positive_pairs += 1
                        key = f"{name}->{m['name']}: {m['status']}"
                        out.seen[key] = out.seen.get(key, 0) + 1
                out.false_positive_answers += bad
            if time.monotonic() - last_report >= 30:
                last_report = time.monotonic()
                progress(f"{out.answers} answers, {out.false_positive_answers} false "
                         f"positives, max phi {out.max_phi:.2f}")
            next_poll += poll
            time.sleep(max(0.0, next_poll - time.monotonic()))
    finally:
        for client in clients.values():
            client.close()
    return out


def find_leader(cluster: Cluster) -> NodeProcess:
    for _ in range(300):
        for n in cluster.nodes:
            try:
                with Client([n.client_address], timeout=2.0) as c:
                    if status(c)["node"]["role"] == "leader":
                        return n
            except QuorumKVError:
                pass
        time.sleep(0.2)
    raise SystemExit("no leader")


def first_times(observers: list[NodeProcess], member: str, wanted: set[str], until: str,
                poll: float, timeout: float) -> dict[str, dict[str, float]]:
    """Seconds from now until each observer first reports ``member`` in each of the
    ``wanted`` statuses; stops once every observer has reported ``until``."""
    clients = {o.name: Client([o.client_address], timeout=2.0) for o in observers}
    times: dict[str, dict[str, float]] = {o.name: {} for o in observers}
    start = time.monotonic()
    try:
        while time.monotonic() - start < timeout:
            for name, client in clients.items():
                try:
                    st = status(client)
                except QuorumKVError:
                    continue
                now = time.monotonic() - start
                for m in st["members"]:
                    if m["name"] == member and m["status"] in wanted:
                        times[name].setdefault(m["status"], now)
            if all(until in t for t in times.values()):
                break
            time.sleep(poll)
    finally:
        for client in clients.values():
            client.close()
    return times


def fmt(value: float | None) -> str:
    return "not seen" if value is None else f"{value:.2f} s"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0,
                   help="seconds of observation under load, all nodes alive")
    p.add_argument("--poll-ms", type=float, default=200.0)
    p.add_argument("--detect-poll-ms", type=float, default=50.0)
    p.add_argument("--detect-timeout", type=float, default=120.0)
    p.add_argument("--dir", type=Path, default=None, help="where the nodes keep data and logs")
    args = p.parse_args()
    base = args.dir or Path(tempfile.mkdtemp(prefix="quorumkv-bench-fd-"))
    base.mkdir(parents=True, exist_ok=True)
    detection: dict[str, dict[str, float]] = {}
    recovery: dict[str, dict[str, float]] = {}
    try:
        progress(f"starting 3 nodes in {base} (tick {TICK_MS} ms)")
        with running_cluster(base, 3, extra=["--tick-ms", str(TICK_MS)]) as cluster:
            cluster.leader_name()
            wait_all_active(cluster)
            with WriteLoad(cluster.endpoints) as load:
                progress(f"observing for {args.duration:g} s under write load")
                started = time.monotonic()
                quiet = observe_quiet(cluster, args.duration, args.poll_ms / 1000)
                quiet_puts, quiet_elapsed = load.puts, time.monotonic() - started
                leader = find_leader(cluster)
                frozen, other = (n for n in cluster.nodes if n is not leader)
                progress(f"SIGSTOP {frozen.name} (leader {leader.name})")
                frozen.pause()
                try:
                    detection = first_times([leader, other], frozen.name,
                                            {"inactive", "failed"}, "failed",
                                            args.detect_poll_ms / 1000, args.detect_timeout)
                finally:
                    frozen.resume()
                progress(f"SIGCONT {frozen.name}")
                recovery = first_times([leader, other], frozen.name, {"active"}, "active",
                                       args.detect_poll_ms / 1000, args.detect_timeout)
                load_errors = load.errors
    finally:
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)

    print("failure detector thresholds (NodeConfig defaults; tick set to "
          f"{TICK_MS} ms on the command line)")
    for name in THRESHOLDS:
        value = TICK_MS if name == "tick_ms" else default(name)
        print(f"  {name:<22} {value}")
    print()
    print(f"healthy cluster under write load, {args.duration:g} s, every node polled every "
          f"{args.poll_ms:g} ms")
    print(f"  {'puts (rate)':<34} {quiet_puts} ({quiet_puts / quiet_elapsed:,.0f}/s), "
          f"{load_errors} errors")
    print(f"  {'status answers (observations)':<34} {quiet.answers} "
          f"({quiet.pairs} observer->member pairs, {quiet.poll_errors} polls failed)")
    print(f"  {'false positives (answers)':<34} {quiet.false_positive_answers}")
    print(f"  {'false positives (pairs)':<34} {quiet.false_positive_pairs}"
          + "".join(f"\n    {k} x{v}" for k, v in sorted(quiet.seen.items())))
    print(f"  {'max phi':<34} {quiet.max_phi:.3f} ({quiet.max_phi_pair})")
    print(f"  {'max last_seen':<34} {quiet.max_last_seen:.3f} s")
    print()
    print(f"frozen follower {frozen.name} (polled every {args.detect_poll_ms:g} ms)")
    print(f"  {'observer':<16} {'-> inactive':>12} {'-> failed':>12} {'SIGCONT -> active':>18}")
    for o in (leader, other):
        role = "leader" if o is leader else "follower"
        d, r = detection.get(o.name, {}), recovery.get(o.name, {})
        print(f"  {o.name + ' (' + role + ')':<16} {fmt(d.get('inactive')):>12} "
              f"{fmt(d.get('failed')):>12} {fmt(r.get('active')):>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
