"""etcd's protocol compiled from its .proto files: the modules, their wire form, the paths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from quorumkv.etcd.generated import PACKAGE, build, etcd_proto, source_hash


def test_modules_generate_and_import_under_a_private_name() -> None:
    pb = etcd_proto()
    for module in (pb.rpc_pb2, pb.rpc_pb2_grpc, pb.kv_pb2, pb.auth_pb2):
        assert module.__name__.startswith(PACKAGE + ".")
    assert "rpc_pb2" not in sys.modules  # nothing under etcd's usual top-level names
    assert etcd_proto() is pb  # built once per process


def test_range_request_round_trips_with_etcds_field_numbers() -> None:
    rpc = etcd_proto().rpc_pb2
    req = rpc.RangeRequest(key=b"a", range_end=b"b", limit=5, revision=7, serializable=True,
                           sort_order=rpc.RangeRequest.DESCEND,
                           sort_target=rpc.RangeRequest.MOD, min_create_revision=3)
    wire = req.SerializeToString()
    assert rpc.RangeRequest.FromString(wire) == req
    # key is field 1 (bytes), revision field 4 (varint), serializable field 7: etcd's.
    assert wire.startswith(b"\x0a\x01a")
    assert b"\x20\x07" in wire and b"\x38\x01" in wire
    header = rpc.ResponseHeader(cluster_id=2**63, member_id=1, revision=9, raft_term=3)
    assert rpc.ResponseHeader.FromString(header.SerializeToString()).cluster_id == 2**63


class _Recorder:
    """A stand-in channel: records the method paths a stub is made with."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def _record(self, path: str, *_: Any, **__: Any) -> None:
        self.paths.append(path)

    unary_unary = unary_stream = stream_unary = stream_stream = _record


def test_method_paths_are_etcds() -> None:
    grpc_mod = etcd_proto().rpc_pb2_grpc
    channel = _Recorder()
    for stub in ("KVStub", "WatchStub", "LeaseStub", "ClusterStub", "MaintenanceStub",
                 "AuthStub"):
        getattr(grpc_mod, stub)(channel)
    paths = set(channel.paths)
    assert {"/etcdserverpb.KV/Range", "/etcdserverpb.KV/Put", "/etcdserverpb.KV/DeleteRange",
            "/etcdserverpb.KV/Txn", "/etcdserverpb.KV/Compact",
            "/etcdserverpb.Watch/Watch", "/etcdserverpb.Lease/LeaseKeepAlive",
            "/etcdserverpb.Cluster/MemberPromote", "/etcdserverpb.Maintenance/Status",
            "/etcdserverpb.Maintenance/Snapshot", "/etcdserverpb.Maintenance/HashKV",
            "/etcdserverpb.Maintenance/MoveLeader", "/etcdserverpb.Auth/Authenticate"
            } <= paths
    kv = etcd_proto().kv_pb2.KeyValue.DESCRIPTOR
    assert kv.full_name == "mvccpb.KeyValue"
    assert etcd_proto().auth_pb2.Permission.DESCRIPTOR.full_name == "authpb.Permission"


def test_concurrent_builds_end_with_one_complete_copy(tmp_path: Path) -> None:
    """Two processes building at once (a cluster's nodes starting together): both get a
    complete directory under the final name, and no temporary directory is left."""
    script = ("import sys; from pathlib import Path; "
              "from quorumkv.etcd.generated import build; "
              "print(build(Path(sys.argv[1]), sys.argv[2]))")
    digest = source_hash()
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), digest],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert set(outs) == {str(tmp_path / digest)}
    built = sorted(p.name for p in (tmp_path / digest).iterdir())
    assert {"__init__.py", "rpc_pb2.py", "rpc_pb2_grpc.py", "kv_pb2.py", "auth_pb2.py"
            } <= set(built)
    assert [p.name for p in tmp_path.iterdir()] == [digest]
    # A second build finds it and builds nothing.
    assert build(tmp_path, digest) == tmp_path / digest
    # The generated modules import each other relatively, never by a top-level name.
    rpc_source = (tmp_path / digest / "rpc_pb2.py").read_text()
    assert "from . import kv_pb2 as kv__pb2" in rpc_source
    assert "\nimport kv_pb2" not in rpc_source
