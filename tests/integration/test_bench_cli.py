"""``quorumkv bench`` and ``quorumkv check perf`` as real processes against a real cluster.

Short runs only, and no timing is asserted: the machine is shared, so a test
checks that load was applied and reported in the right shape, never how
fast. The three nodes are stopped by pid when the module ends
(running_cluster); each command runs under subprocess.run, which kills it by
pid if it overruns.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_harness import Cluster, running_cluster

from quorumkv.client import Client

pytestmark = pytest.mark.timeout(300)

CLI_TIMEOUT = 120.0
SUMMARY_KEYS = {"workload", "consistency", "clients", "connections", "procs", "mode", "rate",
                "key_size", "value_size", "keys", "key_dist", "zipf_s", "seed", "warmup_s",
                "read_ratio", "range_limit", "watchers", "elapsed_s", "ops", "ops_per_s",
                "errors", "errors_by_code", "conflicts", "backlog", "latency_ms", "by_op",
                "writes"}
LATENCY_KEYS = {"p50", "p90", "p99", "p99.9", "max", "mean", "stddev"}
ROOT_PW = "bench-root-pw"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("bench-cluster")) as c:
        c.leader_name()
        yield c


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node with auth enabled and a root user whose password is ROOT_PW."""
    with running_cluster(tmp_path_factory.mktemp("bench-auth-cluster"), size=1) as c:
        c.leader_name()
        with Client(c.endpoints, timeout=30.0) as admin:
            admin.user_add("root", ROOT_PW)
            admin.role_add("root")
            admin.user_grant_role("root", "root")
            admin.auth_enable()
        yield c


def cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quorumkv.cli", *args,
                           "--endpoints", ",".join(cluster.endpoints)],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)


def bench_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    done = cli(cluster, "bench", "--duration", "1", "--warmup", "0.3", "--json", *args)
    assert done.returncode == 0, (done.stdout, done.stderr)
    doc: dict[str, Any] = json.loads(done.stdout)
    assert set(doc) == SUMMARY_KEYS, set(doc) ^ SUMMARY_KEYS
    assert set(doc["latency_ms"]) == LATENCY_KEYS
    return doc


def assert_sane_latency(lat: dict[str, float]) -> None:
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"], lat


@pytest.mark.parametrize(("workload", "kinds"), [
    ("put", {"put"}), ("get", {"get"}), ("mixed", {"get", "put"}), ("txn", {"txn"}),
    ("range", {"range"}), ("watch", {"watch"}),
])
def test_each_workload_applies_load_and_reports_it(cluster: Cluster, workload: str,
                                                   kinds: set[str]) -> None:
    doc = bench_json(cluster, "--workload", workload, "--clients", "4", "--keys", "200",
                     "--read-ratio", "0.5", "--watchers", "2")
    assert doc["workload"] == workload and doc["mode"] == "closed" and doc["procs"] == 1
    assert doc["ops"] > 0 and doc["ops_per_s"] > 0
    assert doc["errors"] == sum(doc["errors_by_code"].values())
    assert_sane_latency(doc["latency_ms"])
    # mixed at half reads: both kinds all but surely appear in a second of requests.
    assert set(doc["by_op"]) == kinds
    assert sum(op["ops"] for op in doc["by_op"].values()) == doc["ops"]
    assert 0 <= doc["conflicts"] <= doc["ops"]
    if workload == "watch":
        assert doc["watchers"] == 2 and doc["writes"]["ops"] > 0
        assert doc["connections"] == 2  # the writers' connection and the watchers'
    else:
        assert doc["writes"] is None
    if workload == "range":
        assert doc["range_limit"] == 10


def test_open_loop_zipfian_keys_over_two_processes(cluster: Cluster) -> None:
    doc = bench_json(cluster, "--workload", "put", "--rate", "100", "--clients", "4",
                     "--procs", "2", "--key-dist", "zipfian", "--zipf-s", "1.1",
                     "--seed", "7")
    assert doc["mode"] == "open" and doc["rate"] == 100.0 and doc["procs"] == 2
    assert doc["key_dist"] == "zipfian" and doc["zipf_s"] == 1.1 and doc["seed"] == 7
    assert doc["connections"] == 2  # one per process
    assert doc["ops"] > 0 and isinstance(doc["backlog"], int) and doc["backlog"] >= 0
    assert_sane_latency(doc["latency_ms"])


def test_a_bounded_number_of_requests_over_processes(cluster: Cluster) -> None:
    done = cli(cluster, "bench", "--workload", "get", "--requests", "60", "--clients", "6",
               "--procs", "3", "--keys", "30", "--warmup", "0", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ops"] + doc["errors"] == 60 and doc["procs"] == 3


def test_the_human_summary_has_a_row_per_kind(cluster: Cluster) -> None:
    done = cli(cluster, "bench", "--workload", "mixed", "--duration", "1", "--warmup", "0",
               "--clients", "4", "--read-ratio", "0.5", "--seed", "3")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("mixed (50% gets), consistency quorum: 4 clients on 1 connection")
    for row in ("get", "put", "all"):
        assert re.search(rf"│\s+{row} │", out), out
    assert "seed 3" in out


def test_check_perf_runs_prints_the_three_checks_and_cleans_up(cluster: Cluster,
                                                               tmp_path: Path) -> None:
    done = cli(cluster, "check", "perf", "--load", "s", "--duration", "3")
    assert done.returncode in (0, 1), done.stderr
    lines = done.stdout.splitlines()
    # Whether it passes depends on the machine; the report's form does not.
    assert re.fullmatch(r"(PASS: Throughput is|FAIL: Throughput too low:) \d+ writes/s",
                        next(x for x in lines if "Throughput" in x))
    assert re.fullmatch(r"(PASS: Slowest request took|FAIL: Slowest request took too long:) "
                        r"\d+\.\d{6}s", next(x for x in lines if "Slowest" in x))
    assert re.fullmatch(r"(PASS: Stddev is|FAIL: Stddev too high:) \d+\.\d{6}s",
                        next(x for x in lines if "Stddev" in x))
    assert lines[-1] == ("PASS" if done.returncode == 0 else "FAIL")
    scan = cli(cluster, "scan", "/quorumkv-check-perf/", "--json")
    assert scan.returncode == 0 and json.loads(scan.stdout)["count"] == 0


def test_check_perf_json_and_a_prefix_that_is_not_empty(cluster: Cluster) -> None:
    prefix = "/check-perf-json/"
    done = cli(cluster, "check", "perf", "--duration", "1", "--prefix", prefix, "--json")
    assert done.returncode in (0, 1), done.stderr
    doc = json.loads(done.stdout)
    assert doc["load"] == "s" and doc["target_writes_per_s"] == 150 and doc["clients"] == 50
    assert [c["name"] for c in doc["checks"]] == ["errors", "throughput", "slowest", "stddev"]
    assert doc["passed"] == all(c["passed"] for c in doc["checks"])
    assert (done.returncode == 0) == doc["passed"]
    assert doc["writes"] > 0 and doc["deleted"] >= doc["writes"]
    assert doc["bench"]["value_size"] == 1024

    put = cli(cluster, "put", prefix + "left-behind", "x")
    assert put.returncode == 0, put.stderr
    refused = cli(cluster, "check", "perf", "--duration", "1", "--prefix", prefix)
    assert refused.returncode == 1
    assert "error (invalid_argument): prefix" in refused.stderr and "has keys" in refused.stderr


def test_bench_and_check_perf_sign_in_with_the_global_user_option(auth_cluster: Cluster,
                                                                  ) -> None:
    root = f"root:{ROOT_PW}"
    # In this process, and in load processes (which get the credentials with their
    # options, over spawn's pipe).
    for procs in ("1", "2"):
        doc = bench_json(auth_cluster, "--workload", "put", "--clients", "4", "--procs", procs,
                         "--user", root)
        assert doc["procs"] == int(procs) and doc["ops"] > 0
        assert doc["errors"] == 0 and doc["errors_by_code"] == {}, doc["errors_by_code"]
    # The options before the command count too (the group's --user).
    done = subprocess.run([sys.executable, "-m", "quorumkv.cli", "--user", root, "bench",
                           "--workload", "get", "--keys", "50", "--clients", "2",
                           "--duration", "1", "--warmup", "0", "--json",
                           "--endpoints", ",".join(auth_cluster.endpoints)],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT, check=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ops"] > 0 and doc["errors"] == 0, doc["errors_by_code"]

    # Without a user every request is refused as unauthenticated: the run stops at
    # once with that error rather than counting a second of refusals.
    for procs in ("1", "2"):
        refused = cli(auth_cluster, "bench", "--workload", "put", "--clients", "4",
                      "--procs", procs, "--duration", "1", "--warmup", "0.3", "--json")
        assert refused.returncode == 1, (refused.stdout, refused.stderr)
        assert refused.stdout == ""
        assert "error (unauthenticated)" in refused.stderr, refused.stderr

    prefix = "/check-perf-auth/"
    done = cli(auth_cluster, "check", "perf", "--duration", "1", "--prefix", prefix,
               "--json", "--user", root)
    assert done.returncode in (0, 1), done.stderr  # the verdict depends on the machine
    doc = json.loads(done.stdout)
    assert doc["errors_by_code"] == {} and doc["checks"][0] == {
        "name": "errors", "passed": True, "message": "PASS: no request failed"}
    assert doc["writes"] > 0 and doc["deleted"] >= doc["writes"]
    refused = cli(auth_cluster, "check", "perf", "--duration", "1", "--prefix", prefix)
    assert refused.returncode == 1
    assert "error (unauthenticated)" in refused.stderr, refused.stderr
