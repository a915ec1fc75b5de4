"""etcd's Watch and Lease services on a real 3-member cluster, through etcd's gRPC stubs.

Watches: events in revision order with etcd's revisions, replay from a start
revision, a compacted start, prev_kv, filters, cancel, progress, several
watches on one stream, and a watch refused by auth. Leases: grant, attach,
time-to-live, keep-alive (a stream), revoke, and expiry seen by a watch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from etcd_support import KV, READER_PW, ROOT_PW, EtcdCluster, enable_auth_with_reader, etcd_cluster

from quorumkv.client import Client
from quorumkv.etcd.generated import etcd_proto

PUT, DELETE = 0, 1
NOPUT, NODELETE = 0, 1
WAIT_S = 30.0


@pytest.fixture(scope="module")
def ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-watch-lease"))) as c:
        yield c


@pytest.fixture
def kv(ec: EtcdCluster) -> Iterator[KV]:
    client = KV(ec.address("n2"))
    yield client
    client.close()


class Watch:
    """One Watch stream to a member: requests in, responses out (read by a thread)."""

    def __init__(self, address: str, metadata: tuple[tuple[str, str], ...] = ()) -> None:
        self.pb = etcd_proto().rpc_pb2
        self.channel = grpc.insecure_channel(address)
        stub = etcd_proto().rpc_pb2_grpc.WatchStub(self.channel)
        self._requests: queue.Queue[Any] = queue.Queue()
        self._responses: queue.Queue[Any] = queue.Queue()
        self.call = stub.Watch(iter(self._requests.get, None), metadata=metadata)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self._responses.put(response)
        except grpc.RpcError as e:
            self._responses.put(e)

    def create(self, key: bytes, **kw: Any) -> Any:
        """Ask for a watch; its created answer."""
        self._requests.put(self.pb.WatchRequest(
            create_request=self.pb.WatchCreateRequest(key=key, **kw)))
        answer = self.next()
        assert answer.created, answer
        return answer

    def send(self, request: Any) -> None:
        self._requests.put(request)

    def cancel(self, watch_id: int) -> None:
        self._requests.put(self.pb.WatchRequest(
            cancel_request=self.pb.WatchCancelRequest(watch_id=watch_id)))

    def progress(self) -> None:
        self._requests.put(self.pb.WatchRequest(
            progress_request=self.pb.WatchProgressRequest()))

    def next(self) -> Any:
        answer = self._responses.get(timeout=WAIT_S)
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    def events(self, count: int, watch_id: int | None = None) -> list[tuple[int, Any]]:
        """The next ``count`` events (of ``watch_id``, if given), each with its watch id;
        answers without events (progress) are skipped."""
        found: list[tuple[int, Any]] = []
        while len(found) < count:
            answer = self.next()
            assert not answer.canceled, answer
            if watch_id is None or answer.watch_id == watch_id:
                found.extend((answer.watch_id, e) for e in answer.events)
        return found

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def watch(ec: EtcdCluster) -> Iterator[Callable[..., Watch]]:
    opened: list[Watch] = []

    def open_watch(name: str = "n1", **kw: Any) -> Watch:
        w = Watch(ec.address(name), **kw)
        opened.append(w)
        return w

    yield open_watch
    for w in opened:
        w.close()


def _status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- watches -----------------------------------------------------------------------------


def test_prefix_watch_sees_every_write_in_order(kv: KV, watch: Callable[..., Watch]) -> None:
    w = watch("n1", metadata=(("hasleader", "true"),))
    created = w.create(b"wp/", range_end=b"wp0")
    assert created.watch_id == 0 and created.header.revision >= 0
    assert created.header.member_id != 0 and created.header.cluster_id != 0
    revisions = [kv.put(f"wp/{i}".encode(), f"v{i}".encode()).header.revision
                 for i in range(5)]
    kv.put(b"wq", b"outside")
    deleted = kv.delete(b"wp/3").header.revision
    events = [e for _, e in w.events(6)]
    assert [(e.type, e.kv.key, e.kv.value) for e in events] == [
        *((PUT, f"wp/{i}".encode(), f"v{i}".encode()) for i in range(5)),
        (DELETE, b"wp/3", b"")]
    assert [e.kv.mod_revision for e in events] == [*revisions, deleted]
    assert all(e.kv.create_revision == e.kv.mod_revision and e.kv.version == 1
               for e in events[:5])


def test_start_revision_replays_history_with_prev_kv(kv: KV,
                                                     watch: Callable[..., Watch]) -> None:
    first = kv.put(b"wr/a", b"1").header.revision
    kv.put(b"wr/a", b"2")
    kv.delete(b"wr/a")
    w = watch("n3")
    w.create(b"wr/a", start_revision=first, prev_kv=True)
    events = [e for _, e in w.events(3)]
    assert [(e.type, e.kv.value, e.prev_kv.value) for e in events] == [
        (PUT, b"1", b""), (PUT, b"2", b"1"), (DELETE, b"", b"2")]
    assert events[0].kv.mod_revision == first and not events[0].HasField("prev_kv")
    # Live events follow the replay on the same watch.
    kv.put(b"wr/a", b"3")
    [(_, live)] = w.events(1)
    assert live.kv.value == b"3" and live.kv.version == 1


def test_filters(kv: KV, watch: Callable[..., Watch]) -> None:
    w = watch("n2")
    no_puts = w.create(b"wf/", range_end=b"wf0", filters=[NOPUT]).watch_id
    no_deletes = w.create(b"wf/", range_end=b"wf0", filters=[NODELETE]).watch_id
    kv.put(b"wf/x", b"1")
    kv.delete(b"wf/x")
    kv.put(b"wf/y", b"2")
    got = w.events(3)
    assert sorted((wid, e.type, e.kv.key) for wid, e in got) == sorted([
        (no_deletes, PUT, b"wf/x"), (no_deletes, PUT, b"wf/y"), (no_puts, DELETE, b"wf/x")])


def test_many_watches_on_one_stream_cancel_and_progress(kv: KV,
                                                        watch: Callable[..., Watch]) -> None:
    w = watch("n1")
    auto = w.create(b"wm/a").watch_id
    chosen = w.create(b"wm/b", watch_id=7).watch_id
    both = w.create(b"wm/", range_end=b"wm0", progress_notify=True).watch_id
    assert chosen == 7 and len({auto, chosen, both}) == 3
    # A watch id already in use on the stream is refused.
    w.send(w.pb.WatchRequest(create_request=w.pb.WatchCreateRequest(key=b"x", watch_id=7)))
    refused = w.next()
    assert refused.created and refused.canceled
    assert "duplicate watch ID" in refused.cancel_reason
    kv.put(b"wm/a", b"1")
    b_revision = kv.put(b"wm/b", b"2").header.revision
    got = w.events(4)
    assert sorted((wid, e.kv.key) for wid, e in got) == sorted([
        (auto, b"wm/a"), (both, b"wm/a"), (chosen, b"wm/b"), (both, b"wm/b")])
    w.cancel(auto)
    canceled = w.next()
    while not canceled.canceled:  # a progress note may come first
        canceled = w.next()
    assert canceled.watch_id == auto and canceled.cancel_reason == ""
    last = kv.put(b"wm/a", b"3").header.revision
    [(wid, event)] = w.events(1)
    assert wid == both and event.kv.mod_revision == last
    w.progress()
    answer = w.next()
    while answer.watch_id != -1:
        answer = w.next()
    # Every watch of the stream has had everything up to the answer's revision: here at
    # least up to what the quietest one (wm/b) was last sent.
    assert not answer.events and b_revision <= answer.header.revision <= last


def test_compacted_start_is_created_then_canceled(kv: KV, watch: Callable[..., Watch]) -> None:
    old = kv.put(b"wc/k", b"1").header.revision
    current = kv.put(b"wc/k", b"2").header.revision
    kv.compact(current)
    w = watch("n2")
    created = w.create(b"wc/k", start_revision=old)
    answer = w.next()
    assert answer.watch_id == created.watch_id and answer.canceled
    assert answer.compact_revision == current
    assert answer.cancel_reason == "etcdserver: mvcc: required revision has been compacted"


def test_an_empty_key_is_refused(watch: Callable[..., Watch]) -> None:
    w = watch("n1")
    w.send(w.pb.WatchRequest(create_request=w.pb.WatchCreateRequest(key=b"")))
    answer = w.next()
    assert answer.created and answer.canceled and answer.watch_id == -1
    assert answer.cancel_reason == "etcdserver: key is not provided"


# -- leases ------------------------------------------------------------------------------


class Lease:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = etcd_proto().rpc_pb2_grpc.LeaseStub(self.channel)
        self.pb = etcd_proto().rpc_pb2

    def grant(self, ttl: int, lease_id: int = 0) -> Any:
        return self.stub.LeaseGrant(self.pb.LeaseGrantRequest(TTL=ttl, ID=lease_id), timeout=10)

    def revoke(self, lease_id: int) -> Any:
        return self.stub.LeaseRevoke(self.pb.LeaseRevokeRequest(ID=lease_id), timeout=10)

    def ttl(self, lease_id: int, keys: bool = False) -> Any:
        return self.stub.LeaseTimeToLive(self.pb.LeaseTimeToLiveRequest(ID=lease_id, keys=keys),
                                         timeout=10)

    def keepalive(self, *ids: int) -> list[Any]:
        requests = [self.pb.LeaseKeepAliveRequest(ID=i) for i in ids]
        return list(self.stub.LeaseKeepAlive(iter(requests), timeout=20))

    def leases(self) -> Any:
        return self.stub.LeaseLeases(self.pb.LeaseLeasesRequest(), timeout=10)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def lease(ec: EtcdCluster) -> Iterator[Lease]:
    # A follower: grants and revokes are sent on, keep-alives and time-to-live too.
    leader = ec.cluster.leader_name()
    client = Lease(ec.address(next(n for n in sorted(ec.ports) if n != leader)))
    yield client
    client.close()


def test_lease_grant_attach_keepalive_revoke(kv: KV, lease: Lease) -> None:
    granted = lease.grant(60)
    lid = granted.ID
    assert lid > 0 and granted.TTL == 60 and granted.header.member_id != 0
    kv.put(b"ls/a", b"1", lease=lid)
    kv.put(b"ls/b", b"2", lease=lid)
    assert kv.range(b"ls/a").kvs[0].lease == lid
    ttl = lease.ttl(lid, keys=True)
    assert lid == ttl.ID and ttl.grantedTTL == 60 and 0 < ttl.TTL <= 60
    assert sorted(ttl.keys) == [b"ls/a", b"ls/b"]
    assert lid in {status.ID for status in lease.leases().leases}
    renewed = lease.keepalive(lid, lid)
    assert [(r.ID, r.TTL) for r in renewed] == [(lid, 60), (lid, 60)]
    lease.revoke(lid)
    assert kv.range(b"ls/", range_end=b"ls0").kvs == []
    # Gone: keep-alive answers TTL 0, time-to-live TTL -1, revoke "not found".
    assert [(r.ID, r.TTL) for r in lease.keepalive(lid)] == [(lid, 0)]
    assert lease.ttl(lid).TTL == -1
    assert _status(lambda: lease.revoke(lid)) == (
        grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")


def test_lease_grant_errors_and_chosen_ids(lease: Lease) -> None:
    chosen = lease.grant(30, lease_id=424242)
    assert chosen.ID == 424242
    assert _status(lambda: lease.grant(30, lease_id=424242)) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: lease already exists")
    assert _status(lambda: lease.grant(9_000_000_001)) == (
        grpc.StatusCode.OUT_OF_RANGE, "etcdserver: too large lease TTL")
    lease.revoke(424242)


def test_an_expired_lease_deletes_its_keys_and_the_watch_sees_it(
        kv: KV, lease: Lease, watch: Callable[..., Watch]) -> None:
    lid = lease.grant(2).ID
    put = kv.put(b"le/k", b"short-lived", lease=lid)
    w = watch("n3")
    w.create(b"le/k", start_revision=put.header.revision)
    [(_, created)] = w.events(1)
    assert created.type == PUT and created.kv.lease == lid
    [(_, expired)] = w.events(1)  # the leader revokes it within its TTL and a scan
    assert expired.type == DELETE and expired.kv.key == b"le/k"
    assert kv.range(b"le/k").kvs == []
    assert lease.ttl(lid).TTL == -1


# -- auth --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def auth_ec(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(Path(tmp_path_factory.mktemp("etcd-watch-auth"))) as c:
        enable_auth_with_reader(c.cluster)
        yield c


def test_a_watch_outside_the_users_permission_is_refused(auth_ec: EtcdCluster) -> None:
    with Client(auth_ec.cluster.endpoints, timeout=30.0, user="reader",
                password=READER_PW) as c:
        token = c.authenticate()
    with Client(auth_ec.cluster.endpoints, timeout=30.0, user="root", password=ROOT_PW) as c:
        root_token = c.authenticate()
    w = Watch(auth_ec.address("n1"), metadata=(("token", token),))
    try:
        allowed = w.create(b"app/", range_end=b"app0")
        assert not allowed.canceled
        w.send(w.pb.WatchRequest(create_request=w.pb.WatchCreateRequest(
            key=b"secret/", range_end=b"secret0")))
        refused = w.next()
        assert refused.created and refused.canceled and refused.watch_id == -1
        assert refused.cancel_reason == "etcdserver: permission denied"
        writer = KV(auth_ec.address("n2"))
        try:
            writer.stub.Put(writer.pb.PutRequest(key=b"app/z", value=b"1"),
                            metadata=(("token", root_token),), timeout=10)
        finally:
            writer.close()
        [(wid, event)] = w.events(1)
        assert wid == allowed.watch_id and event.kv.key == b"app/z"
    finally:
        w.close()
