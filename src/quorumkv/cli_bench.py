"""``quorumkv bench``: the load generator of tools/bench.py with a progress bar and a summary."""

from __future__ import annotations

import asyncio

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.tools.bench import GET_LEVELS, BenchOptions, BenchReport, BenchRun

REFRESH_S = 0.1


@click.command()
@click.option("--workload", type=click.Choice(["put", "get"]), default="put", show_default=True,
              help="What each request does.")
@click.option("--clients", type=click.IntRange(min=1), default=16, show_default=True,
              help="Concurrent requests (asyncio workers, 8 per connection).")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds to measure [10, unless --requests is given].")
@click.option("--requests", type=click.IntRange(min=1), default=None,
              help="Measure this many requests instead of a duration.")
@click.option("--key-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Bytes per key.")
@click.option("--value-size", type=click.IntRange(min=0), default=128, show_default=True,
              help="Bytes per value.")
@click.option("--keys", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Size of the key space; keys are chosen uniformly.")
@click.option("--consistency", type=click.Choice(GET_LEVELS), default="quorum",
              show_default=True, help="Consistency of each request (put: one, quorum, all).")
@click.option("--warmup", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Seconds of load before measuring starts.")
@client_command
def bench(workload: str, clients: int, duration: float | None, requests: int | None,
          key_size: int, value_size: int, keys: int, consistency: str, warmup: float, *,
          settings: ClientSettings) -> None:
    """Load the cluster and report throughput and latency percentiles.

    The keys live under 'bench/' and are overwritten by later runs.
    """
    if duration is None and requests is None:
        duration = 10.0
    options = BenchOptions(endpoints=settings.endpoints, timeout=settings.timeout,
                           workload=workload, clients=clients, duration=duration,
                           requests=requests, key_size=key_size, value_size=value_size,
                           keys=keys, consistency=consistency, warmup=warmup)
    run = BenchRun(options)
    # The bar goes to stderr, so stdout carries only the summary (or the JSON).
    report = asyncio.run(_run_with_progress(run, Console(stderr=True),
                                            show=not settings.json))
    if settings.json:
        emit_json(report.to_json())
    else:
        _print_summary(report)


async def _run_with_progress(run: BenchRun, console: Console, *, show: bool) -> BenchReport:
    columns = (TextColumn("{task.description:<8}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[ops]:>9} ops"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not show, transient=True) as progress:
        bar = progress.add_task("", total=None, ops=0)
        # A plain task rather than a TaskGroup, so the run's own error reaches the
        # command line as itself, not wrapped in an ExceptionGroup.
        task = asyncio.create_task(run.run())
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


def _print_summary(report: BenchReport) -> None:
    o = report.options
    # Plain lines via click: rich would wrap them at its guessed width when piped.
    connections = f"{o.connections} connection{'s' if o.connections > 1 else ''}"
    click.echo(f"{o.workload}, consistency {o.consistency}: {o.clients} clients on "
               f"{connections}; {o.key_size}-byte keys, {o.value_size}-byte values, "
               f"{o.keys} keys")
    lat = report.latency
    table = Table(show_header=True)
    for header in ("ops/s", "ops", "errors", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms"):
        table.add_column(header, justify="right")
    table.add_row(f"{report.ops_per_s:,.0f}", str(report.ops), str(report.error_count),
                  *(f"{v:.2f}" for v in (lat.p50, lat.p90, lat.p99, lat.p999, lat.max)))
    Console().print(table)
    if report.errors:
        click.echo("errors by code: " + ", ".join(f"{code} {n}" for code, n
                                                  in sorted(report.errors.items())))
    click.echo(f"measured {report.elapsed_s:.1f} s after a {o.warmup:g} s warm-up")
