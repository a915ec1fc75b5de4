"""One PySyncObj member replicating a dict, with a small client port for the benchmark.

    .venv-peers/bin/python pysyncobj_node.py --self 127.0.0.1:7001 \
        --partners 127.0.0.1:7002,127.0.0.1:7003 --client-port 7101 --data-dir DIR \
        [--no-batch]

PySyncObj is a library, not a server: it replicates the state of a Python
object and leaves the network API to the application. This script is that
application, kept as thin as possible so that the benchmark measures the
library. SyncObj runs its Raft loop in its own thread (autoTick); the client
port is an asyncio server in the main thread.

Client protocol: each frame is a 4-byte big-endian length and a msgpack array.
A request is ``[id, op, key, value]`` with op ``put``, ``get`` (through the
log), ``get_one`` (this member's copy) or ``status``; the answer is
``[id, error, result]`` with error None on success. Requests on a connection
are pipelined: answers come back as they complete, matched by id.

What the library offers and does not:

* ``put`` is a replicated call with a callback: answered once the entry is
  committed and applied on this member (a follower forwards it to the leader).
* PySyncObj has no linearizable read short of a log write, so ``get`` goes
  through the log as a replicated call; ``get_one`` reads the local dict,
  which may be stale on a follower.
* The journal (``journalFile``) is written through mmap and never msync'ed or
  fsync'ed by the library, so an acknowledged write is not on disk yet:
  PySyncObj does less work per write than quorumkv and etcd, which fsync
  before acknowledging. The script keeps the library's behaviour as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import struct
from typing import Any

import msgpack
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated  # type: ignore[import-not-found]

HEADER = struct.Struct(">I")
MAX_FRAME = 1 << 20


class KVStore(SyncObj):  # type: ignore[misc]
    def __init__(self, self_address: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_address, partners, conf)
        self._data: dict[bytes, bytes] = {}

    @replicated  # type: ignore[untyped-decorator]
    def set(self, key: bytes, value: bytes) -> None:
        self._data[key] = value

    @replicated  # type: ignore[untyped-decorator]
    def read(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def local_read(self, key: bytes) -> bytes | None:
        # Called from the asyncio thread while the Raft thread may apply: a single
        # dict lookup is atomic under the GIL, which is all a stale read needs.
        return self._data.get(key)


def make_conf(data_dir: str, *, batch: bool) -> SyncObjConf:
    options: dict[str, Any] = {
        # The journal keeps the log in a file; the full dump holds the object at
        # log compaction, which the journal needs to restart from.
        "journalFile": os.path.join(data_dir, "journal.bin"),
        "fullDumpFile": os.path.join(data_dir, "dump.bin"),
    }
    if not batch:
        # The library's documented switch for latency over throughput: the leader
        # sends each command to the followers at once (woken through a pipe)
        # instead of gathering commands until its next appendEntriesPeriod
        # (0.1 s) tick.
        options["appendEntriesUseBatch"] = False
    return SyncObjConf(**options)


class ClientPort:
    def __init__(self, store: KVStore) -> None:
        self._store = store

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()

        def answer(req_id: int, error: str | None, result: object) -> None:
            if writer.is_closing():
                return
            body = msgpack.packb([req_id, error, result])
            writer.write(HEADER.pack(len(body)) + body)

        def on_commit(req_id: int) -> Any:
            # Runs in SyncObj's thread: hand the answer to the loop's thread.
            def callback(result: object, error: int) -> None:
                failed = None if error == FAIL_REASON.SUCCESS else f"fail_reason_{error}"
                loop.call_soon_threadsafe(answer, req_id, failed, result)
            return callback

        try:
            while True:
                header = await reader.readexactly(HEADER.size)
                (length,) = HEADER.unpack(header)
                if length > MAX_FRAME:
                    return
                req_id, op, key, value = msgpack.unpackb(await reader.readexactly(length))
                if op == "put":
                    self._store.set(key, value, callback=on_commit(req_id))
                elif op == "get":
                    self._store.read(key, callback=on_commit(req_id))
                elif op == "get_one":
                    answer(req_id, None, self._store.local_read(key))
                elif op == "status":
                    status = self._store.getStatus()
                    leader = status.get("leader")
                    answer(req_id, None, {"leader": str(leader) if leader else None,
                                          "ready": bool(self._store.isReady()),
                                          "self": str(status.get("self"))})
                else:
                    answer(req_id, f"unknown op {op!r}", None)
                # Answers are written without awaiting drain per request: the
                # clients are closed-loop, so the amount in flight is bounded.
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def main_async(args: argparse.Namespace) -> None:
    os.makedirs(args.data_dir, exist_ok=True)
    partners = [p for p in args.partners.split(",") if p]
    store = KVStore(args.self, partners, make_conf(args.data_dir, batch=not args.no_batch))
    port = ClientPort(store)
    server = await asyncio.start_server(port.serve, "127.0.0.1", args.client_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"pysyncobj member {args.self} serving clients on 127.0.0.1:{args.client_port}",
          flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await server.wait_closed()
        store.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--self", required=True, help="HOST:PORT of this member's Raft port")
    parser.add_argument("--partners", required=True, help="the other members, comma separated")
    parser.add_argument("--client-port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--no-batch", action="store_true",
                        help="appendEntriesUseBatch=False: send each command at once")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
