"""The cyclic garbage collector's thresholds in a node's process.

A node allocates tens of container objects per request (decoded requests,
dataclasses, futures), nearly all freed at once by reference counting. With
CPython's default thresholds (700, 10, 10) the collector still runs a young
collection every few requests and a full one, which walks every tracked
object of the process (the Raft log's entries, watch buffers, connection
state), every hundred young ones: each full pass stalls the event loop, and
the requests caught behind it make the latency's tail. Collecting far less
often costs a little memory for the few cycles that do form (asyncio's
exception tracebacks, mostly) and takes the pauses out of the tail: under 64
quorum-put clients the p99 fell from 37-39 ms to 27 ms (bench: back-to-back
runs, see docs/performance.md).
"""

from __future__ import annotations

import gc

NODE_THRESHOLDS = (20_000, 20, 50)
"""Young collection every 20,000 net allocations, then every 20th of those
one of the middle generation, and every 50th of those a full one."""


def tune_for_node() -> None:
    gc.set_threshold(*NODE_THRESHOLDS)
