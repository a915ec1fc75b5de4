"""A cluster serving the etcd v3 API, and a gRPC client of it made from etcd's stubs."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cluster_harness import Cluster, free_ports, running_cluster, wait_until

from quorumkv.client import Client
from quorumkv.etcd.generated import etcd_proto


@dataclass
class EtcdCluster:
    cluster: Cluster
    ports: dict[str, int]
    """Each member's etcd port."""

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def endpoints(self) -> str:
        return ",".join(self.address(name) for name in sorted(self.ports))


class KV:
    """A synchronous client of one member's KV service."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = etcd_proto().rpc_pb2_grpc.KVStub(self.channel)
        self.pb = etcd_proto().rpc_pb2

    def range(self, key: bytes, **kw: Any) -> Any:
        return self.stub.Range(self.pb.RangeRequest(key=key, **kw), timeout=10)

    def put(self, key: bytes, value: bytes, **kw: Any) -> Any:
        return self.stub.Put(self.pb.PutRequest(key=key, value=value, **kw), timeout=10)

    def delete(self, key: bytes, **kw: Any) -> Any:
        return self.stub.DeleteRange(self.pb.DeleteRangeRequest(key=key, **kw), timeout=10)

    def txn(self, **kw: Any) -> Any:
        return self.stub.Txn(self.pb.TxnRequest(**kw), timeout=10)

    def compact(self, revision: int) -> Any:
        return self.stub.Compact(self.pb.CompactionRequest(revision=revision), timeout=10)

    def close(self) -> None:
        self.channel.close()


@contextlib.contextmanager
def etcd_cluster(tmp_path: Path, size: int = 3) -> Iterator[EtcdCluster]:
    """``size`` members, each with an etcd port, once every one answers a Range."""
    names = [f"n{i + 1}" for i in range(size)]
    ports = dict(zip(names, free_ports(size), strict=True))
    # --etcd-urls: MemberList gives each member's etcd port as its client URL.
    urls = ",".join(f"{name}=127.0.0.1:{port}" for name, port in ports.items())
    with running_cluster(tmp_path, size,
                         per_node=lambda name: ["--etcd-listen", f"127.0.0.1:{ports[name]}",
                                                "--etcd-urls", urls]) as cluster:
        cluster.leader_name()
        ec = EtcdCluster(cluster, ports)
        for name in names:
            kv = KV(ec.address(name))
            try:
                wait_until(lambda kv=kv: kv.range(b"health"), what=f"{name}'s etcd port",
                           ignore=(grpc.RpcError,))
            finally:
                kv.close()
        yield ec


ROOT_PW = "root-pw"
READER_PW = "reader-pw"


def enable_auth_with_reader(cluster: Cluster, *, seed: dict[str, str] | None = None) -> None:
    """Users root (role root) and reader (read on ``app/``), the keys ``seed`` written
    first, then auth on."""
    with Client(cluster.endpoints, timeout=30.0, user="root", password=ROOT_PW) as root:
        root.user_add("root", ROOT_PW)
        root.role_add("root")
        root.user_grant_role("root", "root")
        root.user_add("reader", READER_PW)
        root.role_add("app-read")
        root.role_grant("app-read", "read", "app/", prefix=True)
        root.user_grant_role("reader", "app-read")
        for key, value in (seed or {}).items():
            root.put(key, value)
        root.auth_enable()
