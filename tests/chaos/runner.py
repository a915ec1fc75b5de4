"""A Jepsen-style run against real quorumkv processes: clients, a nemesis, a verdict.

::

    python tests/chaos/runner.py --nodes 3 --duration 60 --seed 7
    make chaos DURATION=600 SEED=7

A run starts a cluster of real ``quorumkv serve`` processes whose peer
traffic goes through proxies that can cut any pair (proxy.py), and drives
concurrent clients (one AsyncClient each) doing put / get / compare-and-swap
on a few keys at the default (quorum) consistency, and a few "session"
clients on keys of their own whose reads must be monotonic and read their
own writes (what that level promises; it is not linearizable). Every operation is
recorded with its invocation and completion on one monotonic clock:
``ok``, ``fail`` (it surely did not happen: refused, or never sent) or
``unknown`` (it may have happened: a timeout after it was sent).

A nemesis, driven by a random generator seeded from ``--seed``, meanwhile
kills and restarts nodes (SIGKILL), freezes and thaws them (SIGSTOP /
SIGCONT), and partitions the cluster (one node isolated, the leader
isolated, a majority against a minority, and with five nodes a bridge) and
heals it, one fault at a time.

At the end everything is healed and restarted, every node must converge to
the same applied index and state-machine digest, a final quorum read of
every key joins the history, and the history must be linearizable
(verify/linearizability.py): with the final reads in it, a lost
acknowledged write is a violation too. On failure the history, the
nemesis's log and the nodes' logs stay in a folder whose path is printed
with the seed. The same seed gives the same fault schedule; the timing of
real processes does not replay exactly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))

from cluster_harness import NodeProcess, free_ports
from proxy import Partitions, PeerProxy

from quorumkv.client import AsyncClient
from quorumkv.errors import QuorumKVError, Timeout, UnavailableError
from quorumkv.server.config import node_id_for
from quorumkv.verify.history import History
from quorumkv.verify.linearizability import check_kv

KEYS = [f"k{i}" for i in range(5)]
SESSION_KEYS = [f"s{i}" for i in range(3)]
OP_TIMEOUT = 3.0


@dataclass
class Verdict:
    ok: bool
    seed: int
    nodes: int
    ops: dict[str, int]
    faults: dict[str, int]
    reason: str
    kept: Path | None = None

    def summary(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in sorted(self.ops.items()))
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (f"{'PASS' if self.ok else 'FAIL'} seed={self.seed} nodes={self.nodes}: "
                f"{self.reason}; ops: {ops}; faults: {faults}"
                + (f"; kept in {self.kept}" if self.kept else ""))


@dataclass
class ChaosCluster:
    root: Path
    size: int
    partitions: Partitions = field(default_factory=Partitions)
    nodes: list[NodeProcess] = field(default_factory=list)
    proxies: list[PeerProxy] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    base_args: dict[str, list[str]] = field(default_factory=dict)
    """Each node's command line without how it finds the cluster."""

    async def start(self) -> None:
        ports = free_ports(3 * self.size)
        names = [f"n{i + 1}" for i in range(self.size)]
        self.ids = {n: node_id_for(n) for n in names}
        for i, name in enumerate(names):
            proxy = PeerProxy(self.ids[name], ports[i], self.partitions)
            await proxy.start(ports[self.size + i])
            self.proxies.append(proxy)
        initial = ",".join(f"{n}=127.0.0.1:{p.port}" for n, p in zip(names, self.proxies,
                                                                     strict=True))
        clients = ",".join(f"{n}=127.0.0.1:{ports[2 * self.size + i]}"
                           for i, n in enumerate(names))
        for i, name in enumerate(names):
            self.base_args[name] = [
                sys.executable, "-m", "quorumkv.cli", "serve", "--name", name,
                "--data-dir", str(self.root / name), "--peer-listen", f"127.0.0.1:{ports[i]}",
                "--client-listen", f"127.0.0.1:{ports[2 * self.size + i]}", "--tick-ms", "50",
                "--http-listen", "127.0.0.1:0"]
            args = [*self.base_args[name], "--initial-cluster", initial,
                    "--client-urls", clients]
            node = NodeProcess(name=name, data_dir=self.root / name, peer_port=ports[i],
                               client_port=ports[2 * self.size + i], args=args,
                               log_path=self.root / f"{name}.log")
            self.nodes.append(node)
            node.start()

    @property
    def endpoints(self) -> list[str]:
        return [n.client_address for n in self.nodes]

    async def leader(self) -> str | None:
        for n in self.nodes:
            if not n.running():
                continue
            try:
                async with AsyncClient([n.client_address], timeout=1.0) as c:
                    st = await c.status(local=True)
                leader = st.get("leader")
                if isinstance(leader, str):
                    return leader
            except QuorumKVError:
                continue
        return None

    async def stop(self) -> None:
        for n in self.nodes:
            n.terminate()
        for p in self.proxies:
            await p.close()


class Nemesis:
    """One fault at a time, chosen by a seeded generator."""

    def __init__(self, cluster: ChaosCluster, rng: random.Random, log: list[str],
                 generation: dict[str, int] | None = None) -> None:
        self.cluster = cluster
        self.generation = generation if generation is not None else {}
        self.rng = rng
        self.log = log
        self.counts: dict[str, int] = {}
        self._t0 = time.monotonic()

    def _note(self, what: str) -> None:
        self.counts[what.split(maxsplit=1)[0]] = self.counts.get(what.split(maxsplit=1)[0], 0) + 1
        self.log.append(f"{time.monotonic() - self._t0:8.2f}s {what}")

    async def run(self, stop: asyncio.Event) -> None:
        kinds = ["kill", "pause", "isolate", "isolate-leader", "split", "membership",
                 "transfer"]
        if self.cluster.size >= 5:
            kinds.append("bridge")
        while not stop.is_set():
            await _sleep_or(stop, self.rng.uniform(0.5, 1.5))
            if stop.is_set():
                return
            await self._fault(self.rng.choice(kinds), stop)

    async def _fault(self, kind: str, stop: asyncio.Event) -> None:
        c = self.cluster
        hold = self.rng.uniform(1.0, 3.0)
        names = [n.name for n in c.nodes]
        if kind == "membership":
            await self._replace(c.nodes[self.rng.randrange(len(c.nodes))], stop)
            return
        if kind == "transfer":
            target = self.rng.choice(names)
            try:
                async with AsyncClient(c.endpoints, timeout=5.0) as client:
                    await client.move_leader(target)
                self._note(f"transfer to {target}")
            except QuorumKVError as e:
                self._note(f"transfer-refused to {target}: {type(e).__name__}")
            return
        if kind in ("kill", "pause"):
            node = c.nodes[self.rng.randrange(len(c.nodes))]
            if kind == "kill":
                self._note(f"kill {node.name}")
                await asyncio.to_thread(node.kill)
                await _sleep_or(stop, hold)
                self._note(f"restart {node.name}")
                node.start()
            else:
                self._note(f"pause {node.name}")
                node.pause()
                await _sleep_or(stop, hold)
                self._note(f"resume {node.name}")
                node.resume()
            return
        ids = c.ids
        if kind == "isolate-leader":
            leader = await c.leader()
            victim = leader if leader in ids else self.rng.choice(names)
            groups = [{ids[victim]}, {ids[n] for n in names if n != victim}]
        elif kind == "isolate":
            victim = self.rng.choice(names)
            groups = [{ids[victim]}, {ids[n] for n in names if n != victim}]
        elif kind == "split":
            shuffled = names[:]
            self.rng.shuffle(shuffled)
            cut = len(names) // 2
            groups = [{ids[n] for n in shuffled[:cut]}, {ids[n] for n in shuffled[cut:]}]
        else:  # bridge: two halves that both see one node in the middle
            shuffled = names[:]
            self.rng.shuffle(shuffled)
            middle, left, right = shuffled[0], shuffled[1:3], shuffled[3:]
            c.partitions.set_blocked({(ids[a], ids[b]) for a in left for b in right}
                                     | {(ids[b], ids[a]) for a in left for b in right})
            self._note(f"bridge {middle} between {left} and {right}")
            await _sleep_or(stop, hold)
            self._note("heal")
            c.partitions.heal()
            return
        self._note(f"{kind} {[sorted(n for n in names if ids[n] in g) for g in groups]}")
        c.partitions.cut(groups)
        await _sleep_or(stop, hold)
        self._note("heal")
        c.partitions.heal()


    async def _replace(self, node: NodeProcess, stop: asyncio.Event) -> None:
        """Remove ``node`` from the cluster, then let it join again with an empty data
        directory (the operator's way to replace a member)."""
        c = self.cluster
        others = [n.client_address for n in c.nodes if n is not node]
        try:
            async with AsyncClient(others, timeout=10.0) as client:
                await client.member_remove(node.name)
        except QuorumKVError as e:
            self._note(f"remove-refused {node.name}: {type(e).__name__}")
            return
        self._note(f"remove {node.name}")
        await asyncio.to_thread(node.kill)  # removed: it would stop by itself soon
        self.generation[node.name] = self.generation.get(node.name, 0) + 1
        shutil.rmtree(node.data_dir, ignore_errors=True)
        proxy = c.proxies[c.nodes.index(node)]
        node.args = [*c.base_args[node.name], "--join", ",".join(others),
                     "--peer-advertise", f"127.0.0.1:{proxy.port}"]
        node.start()
        self._note(f"join {node.name}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not stop.is_set():
            try:
                async with AsyncClient(others, timeout=5.0) as client:
                    if any(m.name == node.name and m.voter for m in await client.member_list()):
                        self._note(f"promoted {node.name}")
                        return
            except QuorumKVError:
                pass
            await asyncio.sleep(0.5)


async def _sleep_or(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _client(n: int, endpoints: list[str], history: History, stop: asyncio.Event,
                  rng: random.Random) -> None:
    loop = asyncio.get_running_loop()
    counter = 0
    async with AsyncClient(endpoints, timeout=OP_TIMEOUT) as c:
        while not stop.is_set():
            key = rng.choice(KEYS)
            kind = rng.choice(("put", "get", "cas"))
            counter += 1
            value = f"c{n}-{counter}".encode()
            if kind == "get":
                op = history.invoke(client=n, kind="get", key=key, time=loop.time())
                try:
                    kv = await c.get(key)
                    history.ok(op, time=loop.time(), output=None if kv is None else kv.value)
                except QuorumKVError:
                    history.fail(op, time=loop.time())  # a read changes nothing
                continue
            expected = None
            if kind == "cas":
                current = await _quiet_get(c, key)
                expected = current
            op = history.invoke(client=n, kind=kind, key=key, value=value,
                                expected=expected, time=loop.time())
            try:
                if kind == "put":
                    await c.put(key, value)
                    history.ok(op, time=loop.time())
                else:
                    swapped = await c.compare_and_swap(key, expected, value)
                    history.ok(op, time=loop.time(), output=swapped)
            except Timeout:
                history.unknown(op)  # sent, outcome unknown
            except UnavailableError:
                history.fail(op, time=loop.time())  # refused or never sent: not applied
            except QuorumKVError:
                history.unknown(op)


@dataclass
class SessionLog:
    """What "session" promises one client, checked from what it saw (not linearizability:
    a session read may be stale, just never older than what this client already saw)."""

    violations: list[str] = field(default_factory=list)
    reads: int = 0
    writes: int = 0


async def _session_client(n: int, endpoints: list[str], log: SessionLog, stop: asyncio.Event,
                          rng: random.Random) -> None:
    seen: dict[str, int] = {}      # key -> highest mod revision read
    written: dict[str, int] = {}   # key -> revision of our last acknowledged put
    async with AsyncClient(endpoints, timeout=OP_TIMEOUT, read_consistency="session") as c:
        while not stop.is_set():
            key = rng.choice(SESSION_KEYS)
            try:
                if rng.random() < 0.4:
                    put = await c.put(key, f"s{n}".encode())
                    written[key] = max(written.get(key, 0), put.revision)
                    log.writes += 1
                    continue
                kv = await c.get(key)
            except QuorumKVError:
                continue
            log.reads += 1
            rev = 0 if kv is None else kv.mod_revision
            if rev < seen.get(key, 0):
                log.violations.append(f"client {n}: {key} read at revision {rev} after "
                                      f"{seen[key]} (not monotonic)")
            if rev < written.get(key, 0):
                log.violations.append(f"client {n}: {key} read at revision {rev} after its "
                                      f"own write at {written[key]} (not read-your-writes)")
            seen[key] = max(seen.get(key, 0), rev)


ONE_KEYS = [f"o{i}" for i in range(3)]


@dataclass
class OneLog:
    """The "one" level promises little: a write acknowledged by the leader's disk alone
    may be lost, and a read may be stale. What must hold: a read never returns a value
    nobody wrote, and one node's answers never go back in time."""

    violations: list[str] = field(default_factory=list)
    written: set[bytes] = field(default_factory=set)
    reads: int = 0
    generation: dict[str, int] = field(default_factory=dict)
    """Bumped when a node is replaced: a fresh data directory starts from nothing."""


async def _one_client(n: int, endpoints: list[str], log: OneLog, stop: asyncio.Event,
                      rng: random.Random) -> None:
    counter = 0
    by_node: dict[tuple[str, int, str], int] = {}  # (node, generation, key) -> revision
    async with AsyncClient(endpoints, timeout=OP_TIMEOUT, read_consistency="one",
                           write_consistency="one") as c:
        while not stop.is_set():
            key = rng.choice(ONE_KEYS)
            try:
                if rng.random() < 0.4:
                    counter += 1
                    value = f"o{n}-{counter}".encode()
                    log.written.add(value)  # before sending: it may land however it ends
                    await c.put(key, value)
                    continue
                kv = await c.get(key)
            except QuorumKVError:
                continue
            log.reads += 1
            name = str((c.server_info or {}).get("name"))
            where = (name, log.generation.get(name, 0), key)
            if kv is not None and kv.value not in log.written:
                log.violations.append(f"client {n}: {key} read {kv.value!r}, never written")
            rev = 0 if kv is None else kv.mod_revision
            if rev < by_node.get(where, 0):
                log.violations.append(f"client {n}: {name} answered {key} at revision {rev} "
                                      f"after {by_node[where]}")
            by_node[where] = max(by_node.get(where, 0), rev)


async def _quiet_get(c: AsyncClient, key: str) -> bytes | None:
    try:
        kv = await c.get(key)
    except QuorumKVError:
        return None
    return None if kv is None else kv.value


async def _converge(cluster: ChaosCluster, timeout: float) -> str | None:
    """Wait until every node has the same applied index and digest; None, or why not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            async with AsyncClient(cluster.endpoints, timeout=5.0) as c:
                await c.put("chaos/fence", "x")  # every node must apply up to here
            digests = {}
            for n in cluster.nodes:
                async with AsyncClient([n.client_address], timeout=5.0) as one:
                    d = await one.digest()
                digests[n.name] = (d["applied_index"], d["digest"])
            if len(set(digests.values())) == 1:
                return None
            last = f"digests differ: {digests}"
        except QuorumKVError as e:
            last = f"{type(e).__name__}: {e.message}"
        await asyncio.sleep(0.5)
    return last


async def run(*, nodes: int, duration: float, seed: int, clients: int = 10,
              session_clients: int = 3, keep_root: Path | None = None) -> Verdict:
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix=f"quorumkv-chaos-{seed}-"))
    cluster = ChaosCluster(root, nodes)
    history = History()
    sessions = SessionLog()
    log: list[str] = []
    ones = OneLog()
    nemesis = Nemesis(cluster, random.Random(rng.getrandbits(64)), log, ones.generation)
    ok = False
    reason = "did not finish"
    try:
        await cluster.start()
        for _ in range(600):
            if await cluster.leader():
                break
            await asyncio.sleep(0.1)
        stop = asyncio.Event()
        tasks = [asyncio.ensure_future(_client(i, cluster.endpoints, history, stop,
                                               random.Random(rng.getrandbits(64))))
                 for i in range(clients)]
        tasks += [asyncio.ensure_future(_session_client(
            i, cluster.endpoints, sessions, stop, random.Random(rng.getrandbits(64))))
            for i in range(session_clients)]
        tasks += [asyncio.ensure_future(_one_client(
            i, cluster.endpoints, ones, stop, random.Random(rng.getrandbits(64))))
            for i in range(2)]
        fault_task = asyncio.ensure_future(nemesis.run(stop))
        await asyncio.sleep(duration)
        stop.set()
        await fault_task
        await asyncio.gather(*tasks, return_exceptions=True)
        # Heal everything and let the cluster settle.
        cluster.partitions.heal()
        for n in cluster.nodes:
            if n.proc is not None and n.proc.poll() is None:
                n.resume()
            elif not n.running():
                n.start()
        why = await _converge(cluster, 120.0)
        loop = asyncio.get_running_loop()
        async with AsyncClient(cluster.endpoints, timeout=10.0) as c:
            for key in KEYS:
                op = history.invoke(client=clients, kind="get", key=key, time=loop.time())
                kv = await c.get(key)
                history.ok(op, time=loop.time(), output=None if kv is None else kv.value)
        result = check_kv(history.ops())
        if why is not None:
            reason = f"replicas did not converge: {why}"
        elif not result.ok:
            reason = result.reason
        elif sessions.violations:
            reason = (f"session guarantees broken ({len(sessions.violations)}): "
                      + "; ".join(sessions.violations[:3]))
        elif ones.violations:
            reason = (f"'one' guarantees broken ({len(ones.violations)}): "
                      + "; ".join(ones.violations[:3]))
        else:
            ok, reason = True, (f"{result.reason}; session: {sessions.reads} reads, "
                                f"{sessions.writes} writes, monotonic and read-your-writes; "
                                f"one: {ones.reads} reads, no phantoms, no node went back")
    except Exception as e:  # the verdict must say what broke, and keep the evidence
        reason = f"run failed: {type(e).__name__}: {e}"
    finally:
        await cluster.stop()
    counts: dict[str, int] = {}
    for op in history.ops():
        counts[f"{op.kind}-{op.status}"] = counts.get(f"{op.kind}-{op.status}", 0) + 1
    verdict = Verdict(ok=ok, seed=seed, nodes=nodes, ops=counts, faults=nemesis.counts,
                      reason=reason)
    if ok and keep_root is None:
        shutil.rmtree(root, ignore_errors=True)
    else:
        history.to_jsonl(root / "history.jsonl")
        (root / "nemesis.log").write_text("\n".join(log) + "\n")
        (root / "verdict.json").write_text(json.dumps(
            {"ok": ok, "seed": seed, "nodes": nodes, "reason": reason, "ops": counts,
             "faults": nemesis.counts}, indent=2))
        verdict.kept = root
    return verdict


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="3,5", help="cluster sizes, one run each")
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of faults per cluster size")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    failed = False
    for size in [int(s) for s in args.nodes.split(",")]:
        verdict = asyncio.run(run(nodes=size, duration=args.duration, seed=seed,
                                  clients=args.clients))
        print(verdict.summary(), flush=True)
        failed |= not verdict.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
