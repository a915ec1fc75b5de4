"""The event loop quorumkv's own processes run on: uvloop where it is installed.

uvloop runs asyncio's loop on libuv, in C: each callback, timer and socket
read costs a fraction of what the pure-Python loop charges, and a node runs
tens of them per request. It is a dependency on every platform it supports;
elsewhere the standard loop serves (nothing here depends on uvloop beyond
speed). Only the processes quorumkv starts itself use it (a node, the
benchmark's load processes, the blocking client's thread): an application's
own loop is its own business.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on :func:`new_event_loop`'s loop."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
