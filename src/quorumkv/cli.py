"""The ``quorumkv`` command line.

``serve`` runs a node. The client commands (put, get, del, scan, txn,
status, member list/add/remove/promote, leave, bench, check perf, snapshot) live in ``cli_*.py``
beside this file and talk to a running cluster; see ``cli_common.py`` for the
options they share.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from quorumkv.cli_auth import auth, role, user
from quorumkv.cli_bench import bench
from quorumkv.cli_certs import certs_group, serve_tls_options
from quorumkv.cli_check import check
from quorumkv.cli_cluster import leave, member, status
from quorumkv.cli_common import ClientSettings, QuorumKVGroup, group_options, parse_endpoints
from quorumkv.cli_coordination import lease, lock, watch
from quorumkv.cli_kv import delete, get, put, scan
from quorumkv.cli_snapshot import snapshot
from quorumkv.cli_txn import txn
from quorumkv.errors import QuorumKVError
from quorumkv.server.config import NodeConfig, load_toml, parse_address, parse_initial_cluster
from quorumkv.server.logs import FORMATS, LEVELS, configure_logging


def _fail(err: QuorumKVError) -> None:
    click.echo(f"error ({err.code}): {err.message}", err=True)
    sys.exit(1)


@click.group(cls=QuorumKVGroup)
@click.version_option(package_name="quorumkv")
@group_options
@click.pass_context
def main(ctx: click.Context, endpoints: str, timeout: float, json_output: bool) -> None:
    """quorumkv: a distributed key-value store replicated with Raft."""
    ctx.obj = ClientSettings(endpoints=parse_endpoints(endpoints), timeout=timeout,
                             json=json_output)


for _command in (put, get, delete, scan, txn, status, member, leave, bench, check, watch, lease,
                 lock, snapshot):
    main.add_command(_command)
main.add_command(certs_group)
for _command in (user, role, auth):
    main.add_command(_command)


@main.command()
@click.option("--name", help="This member's name (unique in the cluster).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Where this node keeps its data.")
@click.option("--peer-listen", default=None, help="HOST:PORT for other members [127.0.0.1:7001].")
@click.option("--client-listen", default=None, help="HOST:PORT for clients [127.0.0.1:7101].")
@click.option("--http-listen", default=None,
              help="HOST:PORT for the HTTP API, metrics and dashboard, or 'off' "
                   "[127.0.0.1:7201].")
@click.option("--etcd-listen", default=None,
              help="HOST:PORT for the etcd v3 API (gRPC: etcdctl, etcd's client libraries), "
                   "or 'off' [off].")
@click.option("--peer-advertise", default=None,
              help="HOST:PORT other members reach the peer port at, if not --peer-listen.")
@click.option("--client-advertise", default=None,
              help="HOST:PORT clients reach the client port at, if not --client-listen.")
@click.option("--initial-cluster", default=None,
              help="Initial members: NAME=PEERHOST:PORT,... (this node included).")
@click.option("--client-urls", default=None,
              help="Client addresses of the members, NAME=HOST:PORT,... (for redirects).")
@click.option("--etcd-urls", default=None,
              help="etcd API addresses of the members, NAME=HOST:PORT,... (the client URLs "
                   "the etcd port's member list gives).")
@click.option("--cluster-token", "--token", "cluster_token", default=None,
              envvar="QUORUMKV_TOKEN",
              help="The cluster's shared secret: needed to join and to change the membership "
                   "[quorumkv].")
@click.option("--join", "join", default=None,
              help="Join a running cluster through these members' client addresses "
                   "(HOST:PORT,...) instead of bootstrapping one.")
@click.option("--leave-on-shutdown", is_flag=True, default=None,
              help="On SIGTERM, leave the cluster before stopping.")
@click.option("--max-voters", type=int, default=None, help="Most voters the cluster admits [7].")
@click.option("--promote-lag", type=int, default=None,
              help="A joining learner is promoted within this many entries of the leader "
                   "[1000].")
@click.option("--tick-ms", type=int, default=None, help="Raft tick length [100].")
@click.option("--election-ticks", type=int, default=None, help="Election timeout in ticks [10].")
@click.option("--snapshot-threshold", type=int, default=None,
              help="Entries after which the log is compacted [10000].")
@click.option("--lease-reads/--no-lease-reads", default=None,
              help="Serve quorum reads on the leader from its lease, without a heartbeat "
                   "round; safe while clocks drift less than --max-clock-drift [off].")
@click.option("--max-clock-drift", type=float, default=None,
              help="How far a member's clock may run fast or slow, a share [0.05].")
@click.option("--config", "config_file", type=click.Path(path_type=Path, exists=True),
              help="A TOML file with the same settings (flags override it).")
@click.option("--log-level", default="info", show_default=True, type=click.Choice(LEVELS))
@click.option("--log-format", default="human", show_default=True, type=click.Choice(FORMATS),
              help="human: one readable line per record; json: one JSON object per line.")
@serve_tls_options
def serve(name: str | None, data_dir: Path | None, peer_listen: str | None,
          client_listen: str | None, http_listen: str | None, etcd_listen: str | None,
          peer_advertise: str | None,
          client_advertise: str | None,
          initial_cluster: str | None, client_urls: str | None, etcd_urls: str | None,
          cluster_token: str | None, join: str | None, leave_on_shutdown: bool | None,
          max_voters: int | None, promote_lag: int | None, tick_ms: int | None,
          election_ticks: int | None, snapshot_threshold: int | None,
          lease_reads: bool | None, max_clock_drift: float | None,
          config_file: Path | None, log_level: str, log_format: str,
          tls_settings: dict[str, Any]) -> None:
    """Run a quorumkv node."""
    from quorumkv.server.node import run_node

    configure_logging(log_level, log_format)
    try:
        settings: dict[str, Any] = load_toml(config_file) if config_file else {}
        if name is not None:
            settings["name"] = name
        if data_dir is not None:
            settings["data_dir"] = data_dir
        if peer_listen is not None:
            settings["peer_host"], settings["peer_port"] = parse_address(peer_listen)
        if client_listen is not None:
            settings["client_host"], settings["client_port"] = parse_address(client_listen)
        if http_listen is not None:
            if http_listen.lower() == "off":
                settings["http_port"] = None
            else:
                settings["http_host"], settings["http_port"] = parse_address(http_listen)
        if etcd_listen is not None:
            if etcd_listen.lower() == "off":
                settings["etcd_port"] = None
            else:
                settings["etcd_host"], settings["etcd_port"] = parse_address(etcd_listen)
        if initial_cluster is not None:
            settings["initial_cluster"] = parse_initial_cluster(initial_cluster)
        if client_urls is not None:
            settings["client_addresses"] = {
                n: f"{h}:{p}" for n, (h, p) in parse_initial_cluster(client_urls).items()}
        if etcd_urls is not None:
            settings["etcd_addresses"] = {
                n: f"{h}:{p}" for n, (h, p) in parse_initial_cluster(etcd_urls).items()}
        if join is not None:
            settings["join"] = parse_endpoints(join)
        if peer_advertise is not None:
            settings["peer_advertise"] = peer_advertise
        if client_advertise is not None:
            settings["client_advertise"] = client_advertise
        for key, value in (("cluster_token", cluster_token), ("tick_ms", tick_ms),
                           ("leave_on_shutdown", leave_on_shutdown),
                           ("max_voters", max_voters), ("promote_lag", promote_lag),
                           ("election_ticks", election_ticks),
                           ("snapshot_threshold", snapshot_threshold),
                           ("lease_reads", lease_reads), ("max_clock_drift", max_clock_drift)):
            if value is not None:
                settings[key] = value
        settings.update(tls_settings)
        if "name" not in settings or "data_dir" not in settings:
            raise click.UsageError("--name and --data-dir are required (flag or config file)")
        config = NodeConfig(**settings)
        run_node(config)
    except QuorumKVError as e:
        _fail(e)


if __name__ == "__main__":
    main()
