"""``quorumkv check perf``: is this cluster fast enough for a given load? (tools/check_perf.py)"""

from __future__ import annotations

import click
from rich.console import Console

from quorumkv import event_loop
from quorumkv.cli_bench import run_with_progress
from quorumkv.cli_common import ClientSettings, client_command, emit_json
from quorumkv.tools.check_perf import (
    ALIASES,
    DEFAULT_DURATION_S,
    DEFAULT_PREFIX,
    KEY_SUFFIX_SIZE,
    VALUE_SIZE,
    CheckPerfOptions,
    CheckPerfRun,
    resolve_load,
)


@click.group()
def check() -> None:
    """Check properties of the cluster (as etcdctl check)."""


@check.command()
@click.option("--load", "load_name", type=click.Choice(sorted(ALIASES), case_sensitive=False),
              default="s", show_default=True,
              help="s: 150 writes/s from 50 clients; m: 1,000 from 200; l: 8,000 from 500; "
                   "xl: 15,000 from 1,000.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True),
              default=DEFAULT_DURATION_S, show_default=True, help="Seconds of load.")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
              help="Where the check writes its keys; it must be empty, and is deleted after.")
@click.option("--procs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Load processes sharing the clients and the rate (for the l and xl loads).")
@click.option("--auto-compact", is_flag=True,
              help="Compact the store at the revision of the final delete.")
@client_command
def perf(load_name: str, duration: float, prefix: str, procs: int, auto_compact: bool, *,
         settings: ClientSettings) -> None:
    """Write at a load's rate for a while, and PASS or FAIL the cluster as etcdctl does.

    Passes when no request failed, throughput is at least 90% of the target,
    the slowest request took at most 0.5 s and the standard deviation of the
    latencies is at most 0.1 s. Exits 1 on FAIL.
    """
    load = resolve_load(load_name)
    options = CheckPerfOptions(endpoints=settings.endpoints, timeout=settings.timeout,
                               load=load, duration=duration, prefix=prefix, procs=procs,
                               auto_compact=auto_compact, tls=settings.tls,
                               user=settings.user, password=settings.password)
    run = CheckPerfRun(options)
    console = Console(stderr=True)
    if not settings.json:
        # On stderr with the bar, so stdout has etcdctl's lines only.
        click.echo(f"load {load.name}: {load.limit:,} writes/s from {load.clients} clients "
                   f"for {duration:g} s; {KEY_SUFFIX_SIZE}-byte keys and {VALUE_SIZE}-byte "
                   f"values under {prefix}", err=True)
    result = event_loop.run(run_with_progress(run.bench, run.run(), console,
                                           show=not settings.json))
    if settings.json:
        emit_json(result.to_json())
    else:
        for line in result.lines():
            click.echo(line)
    if not result.passed:
        raise click.exceptions.Exit(1)
