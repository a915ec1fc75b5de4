"""Command line of the simulator: ``python -m quorumkv.sim {run,soak,demo}``."""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from quorumkv.raft.config import InjectedBug
from quorumkv.sim.cluster import SimResult, run_simulation
from quorumkv.sim.options import SimOptions


def _one(seed: int, nodes: int, bugs: frozenset[InjectedBug]) -> SimResult:
    result = run_simulation(SimOptions.from_seed(seed, nodes, bugs))
    if result.ok:
        result.timeline = []  # keep worker replies small
    return result


def _print_stats(result: SimResult) -> None:
    s = result.stats
    print(f"  virtual time {s['virtual_ms']} ms ({s['ticks']} ticks), events {s['events']}, "
          f"messages {s['messages']} ({s['messages_dropped']} dropped)")
    print(f"  leaders elected {s.get('elections_won', 0)}, max term {s['max_term']}, "
          f"entries committed {s['committed']}")
    print(f"  operations ok {s['ops_ok']}, failed {s['ops_fail']}, unknown {s['ops_unknown']}")
    print(f"  faults: crashes {s.get('crashes', 0)}, partitions {s.get('partitions', 0)}, "
          f"membership changes {s.get('conf_changes', 0)}, transfers {s.get('transfers', 0)}, "
          f"snapshots sent {s.get('snapshots_sent', 0)}")


def cmd_run(args: argparse.Namespace) -> int:
    bugs = frozenset(InjectedBug(b) for b in args.bug)
    options = SimOptions.from_seed(args.seed, args.nodes, bugs)
    print(f"seed {args.seed}, {args.nodes} nodes: {options}")
    result = run_simulation(options, verbose=args.verbose)
    _print_stats(result)
    if result.ok:
        print("verdict: SAFE (all safety checks passed, history linearizable, converged)")
        return 0
    if not args.verbose:
        print("\n".join(result.timeline[-40:]))
    print(f"verdict: VIOLATION: {result.violation}")
    print(f"replay: {result.replay_command()}")
    return 1


def cmd_soak(args: argparse.Namespace) -> int:
    started = time.monotonic()
    failures: list[SimResult] = []
    done = 0
    jobs = [(seed, nodes) for seed in range(args.first, args.first + args.seeds)
            for nodes in (3, 5)][: args.seeds]
    bugs = frozenset(InjectedBug(b) for b in args.bug)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(_one, seed, nodes, bugs) for seed, nodes in jobs]
        for fut in futures:
            result = fut.result()
            done += 1
            if not result.ok:
                failures.append(result)
                print(f"FAIL seed {result.seed} nodes {result.nodes}: {result.violation}")
                print(f"  replay: {result.replay_command()}")
            if done % 500 == 0 or done == len(jobs):
                print(f"{done}/{len(jobs)} runs, {len(failures)} failures, "
                      f"{time.monotonic() - started:.0f}s", flush=True)
    print(f"soak: {len(jobs)} runs, {len(failures)} violations, "
          f"{time.monotonic() - started:.1f}s wall")
    return 1 if failures else 0


def cmd_demo(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else 7
    options = SimOptions.from_seed(seed, args.nodes).with_(
        drop_rate=0.05, duplicate_rate=0.02, slow_rate=0.02, crash_interval_ms=700,
        partition_interval_ms=600, membership_interval_ms=900, transfer_interval_ms=800,
        snapshot_threshold=32, clients=5, keys=3, fault_ms=4_000)
    print(f"quorumkv simulator demo: a {args.nodes}-node cluster under faults (seed {seed})")
    print("(the server is not built yet; this runs the real Raft core on a simulated "
          "network and disk)\n")
    result = run_simulation(options, verbose=True)
    print()
    _print_stats(result)
    if result.ok:
        print("verdict: SAFE (all safety checks passed, history linearizable, converged)")
        return 0
    print(f"verdict: VIOLATION: {result.violation}\nreplay: {result.replay_command()}")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quorumkv.sim")
    sub = p.add_subparsers(dest="command", required=True)
    bug_names = [b.value for b in InjectedBug]
    run = sub.add_parser("run", help="run one seed (replays exactly)")
    run.add_argument("--seed", type=int, required=True)
    run.add_argument("--nodes", type=int, default=3)
    run.add_argument("--verbose", action="store_true")
    run.add_argument("--bug", action="append", default=[], choices=bug_names)
    run.set_defaults(fn=cmd_run)
    soak = sub.add_parser("soak", help="run many seeds over 3- and 5-node clusters")
    soak.add_argument("--seeds", type=int, default=1000)
    soak.add_argument("--first", type=int, default=0)
    soak.add_argument("--jobs", type=int, default=2)
    soak.add_argument("--bug", action="append", default=[], choices=bug_names)
    soak.set_defaults(fn=cmd_soak)
    demo = sub.add_parser("demo", help="a readable timeline of one faulty run")
    demo.add_argument("--seed", type=int)
    demo.add_argument("--nodes", type=int, default=5)
    demo.set_defaults(fn=cmd_demo)
    args = p.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
