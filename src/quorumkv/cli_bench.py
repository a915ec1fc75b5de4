"""``quorumkv bench``: the load generator of tools/bench.py with a progress bar and a summary."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from quorumkv import event_loop
from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.tools.bench import GET_LEVELS, WORKLOADS, BenchOptions, BenchReport, BenchRun
from quorumkv.tools.keyspace import KEY_DISTRIBUTIONS

REFRESH_S = 0.1
T = TypeVar("T")


@click.command()
@click.option("--workload", type=click.Choice(WORKLOADS), default="put", show_default=True,
              help="What each request does: put; get; mixed (gets and puts, --read-ratio); "
                   "txn (compare-and-swap on a key's mod_revision); range (scan of "
                   "--range-limit keys); watch (delivery latency to --watchers watches).")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True,
              help="Concurrent requests (asyncio workers, 8 per connection); with --rate, "
                   "the most requests in flight.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: this many requests per second in all, latency measured from "
                   "each request's due time (coordinated omission corrected). "
                   "Default: closed loop.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to measure [10, unless --requests is given].")
@click.option("--requests", type=click.IntRange(min=1), default=None,
              help="Measure this many requests instead of a duration.")
@click.option("--key-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Bytes per key.")
@click.option("--value-size", type=click.IntRange(min=0), default=128, show_default=True,
              help="Bytes per value.")
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Size of the key space.")
@click.option("--key-dist", type=click.Choice(KEY_DISTRIBUTIONS), default="uniform",
              show_default=True, help="How each request picks its key.")
@click.option("--zipf-s", type=click.FloatRange(min=0, min_open=True), default=0.99,
              show_default=True, help="Exponent of the zipfian key distribution.")
@click.option("--consistency", type=click.Choice(GET_LEVELS), default="quorum",
              show_default=True,
              help="Consistency of each request (put and watch: one, quorum, all).")
@click.option("--read-ratio", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="mixed: the share of requests that are gets.")
@click.option("--range-limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="range: keys per scan.")
@click.option("--watchers", type=click.IntRange(min=1), default=4, show_default=True,
              help="watch: watches on the written prefix, each receiving every event.")
@click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds of load before measuring starts.")
@click.option("--procs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Load processes sharing the clients (and rate); one window, merged "
                   "histograms.")
@click.option("--seed", type=click.IntRange(min=0), default=None,
              help="Seed for the keys each worker draws [random, reported with the results].")
@client_command
def bench(workload: str, clients: int, rate: float | None, duration: float | None,
          requests: int | None, key_size: int, value_size: int, keys: int, key_dist: str,
          zipf_s: float, consistency: str, read_ratio: float, range_limit: int,
          watchers: int, warmup: float, procs: int, seed: int | None, *,
          settings: ClientSettings) -> None:
    """Load the cluster and report throughput and latency percentiles.

    The keys live under 'bench/' (watch: 'bench-w0/', one prefix per load process)
    and are overwritten by later runs.
    """
    if duration is None and requests is None:
        duration = 10.0
    options = BenchOptions(endpoints=settings.endpoints, timeout=settings.timeout,
                           workload=workload, clients=clients, duration=duration,
                           requests=requests, key_size=key_size, value_size=value_size,
                           keys=keys, consistency=consistency, warmup=warmup,
                           read_ratio=read_ratio, range_limit=range_limit, watchers=watchers,
                           key_dist=key_dist, zipf_s=zipf_s, rate=rate, procs=procs, seed=seed,
                           tls=settings.tls, user=settings.user, password=settings.password)
    run = BenchRun(options)
    # The bar goes to stderr, so stdout carries only the summary (or the JSON).
    report = event_loop.run(run_with_progress(run, run.run(), Console(stderr=True),
                                           show=not settings.json))
    if settings.json:
        emit_json(report.to_json())
    else:
        print_summary(report)


async def run_with_progress(run: BenchRun, work: Awaitable[T], console: Console, *,
                            show: bool) -> T:
    """Await ``work`` while drawing ``run``'s progress."""
    columns = (TextColumn("{task.description:<8}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[ops]:>9} ops"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show, transient=True) as progress:
        bar = progress.add_task("", total=None, ops=0)
        # A plain task rather than a TaskGroup, so the run's own error reaches the
        # command line as itself, not wrapped in an ExceptionGroup.
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                phase, done, total = run.progress()
                progress.update(bar, description=phase.value, completed=done, total=total,
                                ops=run.measured_ops)
                await asyncio.wait({task}, timeout=REFRESH_S)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        return task.result()


def print_summary(report: BenchReport) -> None:
    o = report.options
    # Plain lines via click: rich would wrap them at its guessed width when piped.
    n = report.connections or o.connections
    connections = f"{n} connection{'s' if n > 1 else ''}"
    procs = f" in {o.procs} processes" if o.procs > 1 else ""
    click.echo(f"{_describe(report)}, consistency {o.consistency}: {o.clients} clients on "
               f"{connections}{procs}; {o.key_size}-byte keys, {o.value_size}-byte values, "
               f"{o.keys} keys ({_key_dist(report)})")
    table = Table(show_header=True)
    for header in ("op", "ops/s", "ops", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                   "max ms"):
        table.add_column(header, justify="right")
    rows = [(kind, s.ops, s.latency) for kind, s in report.by_op.items()]
    if len(rows) != 1:
        rows.append(("all", report.ops, report.latency))
    for kind, ops, lat in rows:
        per_s = ops / report.elapsed_s if report.elapsed_s > 0 else 0.0
        errors = str(report.error_count) if kind == "all" or len(rows) == 1 else ""
        table.add_row(kind, f"{per_s:,.0f}", str(ops), errors,
                      *(f"{v:.2f}" for v in (lat.p50, lat.p90, lat.p99, lat.p999, lat.max)))
    Console().print(table)
    if o.workload == "txn":
        share = report.conflicts / report.ops if report.ops else 0.0
        click.echo(f"conflicts: {report.conflicts} of {report.ops} compare-and-swaps "
                   f"({share:.1%}) lost a race and wrote nothing")
    if report.writes is not None:
        w = report.writes
        who = (f"each delivered to {o.watchers} watchers" if o.procs == 1 else
               f"each delivered to the watchers of its own process ({o.watchers} in all)")
        click.echo(f"writes: {w.ops} puts, p50 {w.latency.p50:.2f} ms, "
                   f"p99 {w.latency.p99:.2f} ms; {who}")
    if o.rate is not None:
        click.echo(f"open loop at {o.rate:,.0f} requests/s: {report.ops_per_s:,.0f}/s served; "
                   f"latency from each request's due time; {report.backlog} due requests "
                   f"never sent")
    if report.errors:
        click.echo("errors by code: " + ", ".join(f"{code} {n}" for code, n
                                                  in sorted(report.errors.items())))
    click.echo(f"measured {report.elapsed_s:.1f} s after a {o.warmup:g} s warm-up; "
               f"seed {report.seed}")


def _describe(report: BenchReport) -> str:
    o = report.options
    if o.workload == "mixed":
        return f"mixed ({o.read_ratio:.0%} gets)"
    if o.workload == "range":
        return f"range (scans of {o.range_limit} keys)"
    if o.workload == "watch":
        return f"watch ({o.watchers} watchers)"
    return o.workload


def _key_dist(report: BenchReport) -> str:
    o = report.options
    return f"zipfian, s={o.zipf_s:g}" if o.key_dist == "zipfian" else o.key_dist
