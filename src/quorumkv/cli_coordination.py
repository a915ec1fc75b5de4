"""Coordination commands of the command line: watch, lease grant/revoke/ttl/list/keep-alive,
and lock (run a command while holding a lock).

Lease ids are printed in decimal; arguments take decimal or ``0x``-prefixed hex
(the form a lock's key ends with).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from quorumkv.cli_common import (
    ClientSettings,
    bytes_field,
    client_command,
    emit_json,
    kv_json,
    lease_id_option,
    text,
)
from quorumkv.client import AsyncClient, Event, EventType, Lock
from quorumkv.client.recipes import LOCK_PREFIX
from quorumkv.errors import LeaseNotFound, UnavailableError

LOCK_TOKEN_ENV = "QUORUMKV_LOCK_TOKEN"


def _arg_bytes(value: str) -> bytes:
    # surrogateescape gives back the exact bytes of a non-UTF-8 command-line argument.
    return value.encode("utf-8", errors="surrogateescape")


def _lease_id(ctx: click.Context, param: click.Parameter, value: str) -> int:
    lease_id = lease_id_option(ctx, param, value)
    assert lease_id is not None
    return lease_id


class _Stop(Exception):
    """SIGTERM, turned into an exception in the main thread like SIGINT's KeyboardInterrupt."""


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM raises _Stop in the main thread while inside (a blocking call is
    interrupted, like by Ctrl-C)."""
    def raise_stop(signum: int, frame: FrameType | None) -> None:
        raise _Stop

    previous = signal.signal(signal.SIGTERM, raise_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- watch -------------------------------------------------------------------------------


def _event_line(e: Event, *, prev_kv: bool) -> str:
    kv = e.kv
    if e.type is EventType.PUT:
        line = f"PUT {text(kv.key)} {text(kv.value)} rev={kv.mod_revision}"
    else:
        line = f"DELETE {text(kv.key)} rev={kv.mod_revision}"
    if prev_kv and e.prev_kv is not None:
        line += f" prev={text(e.prev_kv.value)}"
    return line


def _event_json(e: Event, *, prev_kv: bool) -> dict[str, Any]:
    kv = e.kv
    doc: dict[str, Any] = {"type": "PUT" if e.type is EventType.PUT else "DELETE"}
    doc |= bytes_field("key", kv.key)
    if e.type is EventType.PUT:
        doc |= bytes_field("value", kv.value)
    doc["revision"] = kv.mod_revision
    doc["kv"] = kv_json(kv) if e.type is EventType.PUT else None
    if prev_kv:
        doc["prev_kv"] = None if e.prev_kv is None else kv_json(e.prev_kv)
    return doc


@click.command()
@click.argument("key")
@click.option("--prefix", is_flag=True, help="Watch every key starting with KEY.")
@click.option("--rev", "start_revision", type=click.IntRange(min=0), default=0,
              help="Start at this revision, replaying history from it (0: from now).")
@click.option("--prev-kv", is_flag=True, help="Also show the value each event replaced.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit (0) after this many events.")
@client_command
def watch(key: str, prefix: bool, start_revision: int, prev_kv: bool, count: int | None, *,
          settings: ClientSettings) -> None:
    """Print every change to KEY (or, with --prefix, to keys starting with it) as it
    happens, one line per event: `PUT key value rev=N` or `DELETE key rev=N`.

    Runs until interrupted (Ctrl-C or SIGTERM; exit code 0) or until --count events.
    The watch survives the failure of the node it is connected to and misses nothing.
    A line on stderr says from which revision on events are shown.
    """
    seen = 0
    with _stoppable(), settings.client() as c:
        try:
            with c.watch(_arg_bytes(key), prefix=prefix, start_revision=start_revision,
                         prev_kv=prev_kv) as w:
                click.echo(f"watching from revision {w.next_revision}", err=True)
                for batch in w:
                    for event in batch.events:
                        if settings.json:
                            emit_json(_event_json(event, prev_kv=prev_kv))
                        else:
                            click.echo(_event_line(event, prev_kv=prev_kv))
                        seen += 1
                        if count is not None and seen >= count:
                            return
        except (KeyboardInterrupt, _Stop):
            return


# -- leases ------------------------------------------------------------------------------


@click.group()
def lease() -> None:
    """Grant, inspect, keep alive and revoke leases."""


@lease.command(name="grant")
@click.argument("ttl", type=click.IntRange(min=1))
@client_command
def lease_grant(ttl: int, *, settings: ClientSettings) -> None:
    """Grant a lease of TTL seconds and print its id.

    The lease is NOT kept alive once this command exits: it expires TTL seconds
    later unless something keeps it alive (`quorumkv lease keep-alive ID`) or
    revokes it first.
    """
    with settings.client() as c:
        granted = c.grant_lease(ttl, keep_alive=False)
    if settings.json:
        emit_json({"id": granted.id, "ttl": granted.ttl})
    else:
        click.echo(str(granted.id))


@lease.command(name="revoke")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@client_command
def lease_revoke(lease_id: int, *, settings: ClientSettings) -> None:
    """Revoke lease ID now: every key attached to it is deleted."""
    with settings.client() as c:
        result = c.revoke_lease(lease_id)
    if settings.json:
        emit_json({"id": lease_id, "deleted": result.deleted, "revision": result.revision})
    else:
        click.echo(f"lease {lease_id} revoked ({result.deleted} keys deleted)")


@lease.command(name="ttl")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@click.option("--keys", is_flag=True, help="Also list the keys attached to the lease.")
@client_command
def lease_ttl(lease_id: int, keys: bool, *, settings: ClientSettings) -> None:
    """Show lease ID's TTL and the seconds left before the leader expires it."""
    with settings.client() as c:
        info = c.lease_ttl(lease_id, keys=keys)
    attached = [k for k in info.get("keys") or [] if isinstance(k, bytes)]
    if settings.json:
        doc: dict[str, Any] = {"id": info["id"], "ttl": info["ttl"],
                               "remaining": info["remaining"]}
        if keys:
            doc["keys"] = [bytes_field("key", k) for k in attached]
        emit_json(doc)
        return
    click.echo(f"lease {info['id']}: ttl {info['ttl']}s, remaining {info['remaining']}s")
    if keys:
        for k in attached:
            click.echo(text(k))


@lease.command(name="list")
@client_command
def lease_list(*, settings: ClientSettings) -> None:
    """List every lease: `ID ttl=SECONDS`."""
    with settings.client() as c:
        leases = c.leases()
    if settings.json:
        emit_json({"leases": [{"id": i, "ttl": t} for i, t in sorted(leases.items())]})
        return
    for lease_id, ttl in sorted(leases.items()):
        click.echo(f"{lease_id} ttl={ttl}")


@lease.command(name="keep-alive")
@click.argument("lease_id", metavar="ID", callback=_lease_id)
@client_command
def lease_keep_alive(lease_id: int, *, settings: ClientSettings) -> None:
    """Keep lease ID alive (a renewal every third of its TTL) until interrupted
    (Ctrl-C or SIGTERM: exit 0). Exits 1 if the lease expires or is revoked."""
    with _stoppable(), settings.client() as c:
        try:
            while True:
                try:
                    ttl = c.lease_keepalive(lease_id)
                except LeaseNotFound:
                    raise
                except UnavailableError as e:
                    click.echo(f"keep-alive failed, retrying: {e.message}", err=True)
                    time.sleep(0.5)
                    continue
                if settings.json:
                    emit_json({"id": lease_id, "ttl": ttl})
                else:
                    click.echo(f"lease {lease_id} kept alive (ttl {ttl}s)")
                time.sleep(max(0.1, ttl / 3))
        except (KeyboardInterrupt, _Stop):
            return


# -- lock --------------------------------------------------------------------------------


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--ttl", type=click.IntRange(min=1), default=10, show_default=True,
              help="Seconds the lock outlives this process if it dies.")
@click.option("--wait", "wait_timeout", type=click.FloatRange(min=0), default=None,
              help="Give up (exit 1) if the lock is not acquired within this many seconds.")
@click.option("--kill-after", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="If the lock is lost, seconds between SIGTERM and SIGKILL of the command.")
@client_command
def lock(name: str, command: tuple[str, ...], ttl: int, wait_timeout: float | None,
         kill_after: float, *, settings: ClientSettings) -> None:
    """Run COMMAND while holding the lock NAME: `quorumkv lock NAME -- COMMAND [ARGS...]`.

    Waits for the lock (waiters get it in the order they asked), then runs
    COMMAND with QUORUMKV_LOCK_TOKEN set to the fencing token (it increases
    from holder to holder: pass it to what the lock protects and have that
    refuse smaller ones). When COMMAND exits the lock is released, and this
    exits with COMMAND's exit code (128+N if a signal N ended it).

    If the lock is lost while COMMAND runs (its lease could not be kept
    alive), COMMAND gets SIGTERM, then SIGKILL after --kill-after seconds,
    and this exits 1. SIGTERM and SIGHUP sent to this process are passed on
    to COMMAND; Ctrl-C reaches COMMAND directly.
    """
    code = asyncio.run(_locked(settings, _arg_bytes(name), command, ttl=ttl,
                               wait_timeout=wait_timeout, kill_after=kill_after))
    raise click.exceptions.Exit(code)


async def _locked(settings: ClientSettings, name: bytes, command: tuple[str, ...], *,
                  ttl: int, wait_timeout: float | None, kill_after: float) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    async with AsyncClient(settings.endpoints, timeout=settings.timeout,
                           tls=settings.tls, user=settings.user,
                           password=settings.password) as client:
        held = Lock(client, name, ttl=ttl, prefix=LOCK_PREFIX)
        # While waiting, SIGTERM gives up the place in the queue, as Ctrl-C does.
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
        try:
            token = await held.acquire(timeout=wait_timeout)
        except asyncio.CancelledError:
            return 128 + signal.SIGTERM  # (Ctrl-C here raises KeyboardInterrupt instead)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
        try:
            return await _run_child(held, token, command, kill_after=kill_after)
        finally:
            await held.release()


async def _run_child(held: Lock, token: int, command: tuple[str, ...], *,
                     kill_after: float) -> int:
    loop = asyncio.get_running_loop()
    env = {**os.environ, LOCK_TOKEN_ENV: str(token)}
    try:
        child = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as e:
        click.echo(f"error: cannot run {command[0]!r}: {e.strerror or e}", err=True)
        return 127
    forwarded = (signal.SIGTERM, signal.SIGHUP)
    for sig in forwarded:
        loop.add_signal_handler(sig, _forward, child, sig)
    # Ctrl-C goes to the whole foreground process group: the child gets it itself.
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        exited = asyncio.ensure_future(child.wait())
        lost = asyncio.ensure_future(held.wait_lost())
        await asyncio.wait({exited, lost}, return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        if not exited.done():
            why = held.why_lost or "its lease could not be kept alive"
            click.echo(f"error: lost the lock while the command ran ({why}); stopping it",
                       err=True)
            _forward(child, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(exited), kill_after)
            except TimeoutError:
                _forward(child, signal.SIGKILL)
                await exited
            return 1
        rc = exited.result()
        return 128 - rc if rc < 0 else rc
    finally:
        for sig in (*forwarded, signal.SIGINT):
            loop.remove_signal_handler(sig)
        if child.returncode is None:  # an exception above: leave no child behind
            _forward(child, signal.SIGKILL)
            await child.wait()


def _forward(child: asyncio.subprocess.Process, sig: int) -> None:
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, sig)

