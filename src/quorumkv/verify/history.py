"""The history a checker judges: what each client asked, when, and what it was told.

A history is recorded from the outside, by the code that drives clients (the
simulator or a chaos test), never by the store itself. Each operation is an
interval from invocation (``call``) to completion (``ret``) and one of three
outcomes:

``ok``
    the operation took effect exactly once, somewhere inside its interval, and
    ``output`` is what it observed;
``fail``
    it definitely did not take effect (the request was refused before it could
    reach the log), so a checker drops it;
``unknown``
    it may have taken effect at any moment after ``call``, or never (a timeout,
    a lost connection, a crashed client). Its interval is open-ended, which is
    why ``ret`` is ``None``.

Telling ``fail`` from ``unknown`` is the recorder's whole job: calling a
timed-out write a failure lets a checker reject a correct store, and calling
every error unknown makes lost writes invisible.

Histories are saved as JSON lines, one operation per line with bytes in hex,
so that a failing run can be kept next to its seed and checked again.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

OpKind = Literal["put", "get", "cas"]
OpStatus = Literal["ok", "fail", "unknown"]
Time: TypeAlias = int | float
StrPath: TypeAlias = str | os.PathLike[str]

_KINDS: frozenset[str] = frozenset(("put", "get", "cas"))
_STATUSES: frozenset[str] = frozenset(("ok", "fail", "unknown"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    """One client operation on one key, as the client saw it.

    ``expected`` of ``None`` on a cas means "the key must be absent". ``output``
    is what an ``ok`` operation returned: the value read by a get (``None`` if
    the key was absent), whether a cas swapped, nothing for a put. Operations
    that did not complete with ``ok`` carry no output.

    Inconsistent fields raise :class:`ValueError` at construction, so a wrong
    recorder is caught where the mistake is made rather than as a puzzling
    verdict from the checker.
    """

    id: int
    client: int
    kind: OpKind
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    call: Time
    ret: Time | None
    status: OpStatus
    output: bytes | bool | None = None

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem is not None:
            raise ValueError(f"op {self.id}: {problem}")


def _problem(op: Op) -> str | None:
    if not _is_int(op.id) or not _is_int(op.client):
        return "id and client must be integers"
    if not isinstance(op.key, str):
        return f"key must be a str, got {op.key!r}"
    if op.kind not in _KINDS:
        return f"unknown kind {op.kind!r}"
    if op.status not in _STATUSES:
        return f"unknown status {op.status!r}"
    if not _is_time(op.call):
        return f"call time {op.call!r} is not a finite number"
    if op.status == "unknown":
        if op.ret is not None:
            return "an unknown outcome has no completion time (ret must be None)"
    elif op.ret is None or not _is_time(op.ret):
        return f"a {op.status} op needs a finite completion time, got {op.ret!r}"
    elif op.ret < op.call:
        return f"completes at {op.ret} before it was invoked at {op.call}"
    if op.kind == "get":
        if op.value is not None or op.expected is not None:
            return "a get carries no value or expected value"
    elif not isinstance(op.value, bytes):
        return f"a {op.kind} needs a bytes value to write"
    elif op.kind == "put" and op.expected is not None:
        return "a put has no expected value"
    elif op.expected is not None and not isinstance(op.expected, bytes):
        return "a cas's expected value must be bytes or None"
    if op.status != "ok" or op.kind == "put":
        if op.output is not None:
            return f"a {op.status} {op.kind} has no output"
    elif op.kind == "get":
        if op.output is not None and not isinstance(op.output, bytes):
            return f"a get's output is the value read (bytes) or None, got {op.output!r}"
    elif not isinstance(op.output, bool):
        return "an ok cas's output says whether it swapped (True or False)"
    return None


def _is_int(n: object) -> bool:
    return isinstance(n, int) and not isinstance(n, bool)


def _is_time(t: object) -> bool:
    return isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)


@dataclass(slots=True, kw_only=True)
class _Invocation:
    client: int
    kind: OpKind
    key: str
    value: bytes | None
    expected: bytes | None
    call: Time


class History:
    """Records invoke/complete events as they happen (single-threaded or asyncio use).

    An operation still open when :meth:`ops` is called is reported as
    ``unknown``: the run ended before its client learnt the outcome, which is
    exactly the uncertainty ``unknown`` describes.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._open: dict[int, _Invocation] = {}
        self._done: dict[int, Op] = {}

    def invoke(
        self,
        *,
        client: int,
        kind: OpKind,
        key: str,
        value: bytes | None = None,
        expected: bytes | None = None,
        time: Time,
    ) -> int:
        op_id = self._next_id
        # Validate now, with a provisional outcome, so a malformed invocation
        # fails at the call site rather than when it completes.
        inv = _Invocation(
            client=client, kind=kind, key=key, value=value, expected=expected, call=time
        )
        _op(op_id, inv, status="unknown", ret=None, output=None)
        self._next_id += 1
        self._open[op_id] = inv
        return op_id

    def ok(self, op_id: int, *, time: Time, output: bytes | bool | None = None) -> None:
        self._complete(op_id, status="ok", ret=time, output=output)

    def fail(self, op_id: int, *, time: Time) -> None:
        """The operation definitely did NOT take effect."""
        self._complete(op_id, status="fail", ret=time, output=None)

    def unknown(self, op_id: int) -> None:
        """The operation may or may not have taken effect, at any time after its call."""
        self._complete(op_id, status="unknown", ret=None, output=None)

    def ops(self) -> list[Op]:
        """Every operation in invocation order; open ones as ``unknown``."""
        out = dict(self._done)
        for op_id, inv in self._open.items():
            out[op_id] = _op(op_id, inv, status="unknown", ret=None, output=None)
        return [out[op_id] for op_id in sorted(out)]

    def to_jsonl(self, path: StrPath) -> None:
        """Write :meth:`ops` to ``path``, replacing it atomically."""
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for op in self.ops():
                f.write(json.dumps(_encode(op), separators=(",", ":")))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def from_jsonl(cls, path: StrPath) -> History:
        ops: list[Op] = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    ops.append(_decode(json.loads(line)))
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{os.fspath(path)}:{lineno}: {e}") from e
        return cls._restore(ops)

    @classmethod
    def _restore(cls, ops: Iterable[Op]) -> History:
        history = cls()
        for op in ops:
            if op.id in history._done:
                raise ValueError(f"duplicate op id {op.id}")
            history._done[op.id] = op
        history._next_id = max(history._done, default=-1) + 1
        return history

    def _complete(
        self, op_id: int, *, status: OpStatus, ret: Time | None, output: bytes | bool | None
    ) -> None:
        inv = self._open.get(op_id)
        if inv is None:
            state = "already completed" if op_id in self._done else "never invoked"
            raise ValueError(f"op {op_id} cannot complete: it was {state}")
        op = _op(op_id, inv, status=status, ret=ret, output=output)
        del self._open[op_id]
        self._done[op_id] = op


def _op(
    op_id: int,
    inv: _Invocation,
    *,
    status: OpStatus,
    ret: Time | None,
    output: bytes | bool | None,
) -> Op:
    return Op(
        id=op_id,
        client=inv.client,
        kind=inv.kind,
        key=inv.key,
        value=inv.value,
        expected=inv.expected,
        call=inv.call,
        ret=ret,
        status=status,
        output=output,
    )


def _hex(b: bytes | None) -> str | None:
    return None if b is None else b.hex()


def _unhex(s: Any) -> bytes | None:
    if s is None:
        return None
    if not isinstance(s, str):
        raise TypeError(f"expected a hex string or null, got {s!r}")
    return bytes.fromhex(s)


def _encode(op: Op) -> dict[str, Any]:
    # JSON keeps the three kinds of output apart: true/false, a hex string, null.
    output = op.output if isinstance(op.output, bool) else _hex(op.output)
    return {
        "id": op.id,
        "client": op.client,
        "kind": op.kind,
        "key": op.key,
        "value": _hex(op.value),
        "expected": _hex(op.expected),
        "call": op.call,
        "ret": op.ret,
        "status": op.status,
        "output": output,
    }


def _decode(d: Any) -> Op:
    if not isinstance(d, dict):
        raise TypeError(f"expected a JSON object, got {d!r}")
    raw = d["output"]
    output = raw if isinstance(raw, bool) else _unhex(raw)
    return Op(
        id=d["id"],
        client=d["client"],
        kind=d["kind"],
        key=d["key"],
        value=_unhex(d["value"]),
        expected=_unhex(d["expected"]),
        call=d["call"],
        ret=d["ret"],
        status=d["status"],
        output=output,
    )
