"""The readable transaction form of ``quorumkv txn``, close to etcdctl's.

One item per line: first the compares, then the operations run if every
compare holds, then a line ``else`` (or ``--``) and the operations run
otherwise::

    # comments and blank lines are ignored
    value("config/owner") = "alice"
    version("config/lock") = 0
    mod("config/epoch") < 42
    then
    put config/lock alice
    get config/owner
    else
    get config/lock

A compare is ``TARGET("key") OP VALUE``: TARGET is ``value``, ``version``,
``create`` (create revision), ``mod`` (mod revision) or ``lease``; OP is
``=`` (or ``==``), ``!=``, ``>`` or ``<``; VALUE is a string for ``value``
and an integer otherwise. As in etcd, a missing key has version, create and
mod revision 0, so ``create("k") = 0`` means "k does not exist". The
``then`` line is optional. Operations are ``put KEY VALUE``, ``del KEY`` and
``get KEY``; ``del`` and ``get`` take ``--prefix``. Keys and values are
words, or quoted like in a shell.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass

from quorumkv.errors import InvalidArgument
from quorumkv.kv.commands import (
    Compare,
    CompareOp,
    CompareTarget,
    DeleteRange,
    Put,
    RangeRequest,
    TxnOp,
)
from quorumkv.kv.keys import prefix_end

TARGETS = {
    "value": CompareTarget.VALUE,
    "version": CompareTarget.VERSION,
    "create": CompareTarget.CREATE_REVISION,
    "create_revision": CompareTarget.CREATE_REVISION,
    "mod": CompareTarget.MOD_REVISION,
    "mod_revision": CompareTarget.MOD_REVISION,
    "lease": CompareTarget.LEASE,
}
OPS = {"=": CompareOp.EQUAL, "==": CompareOp.EQUAL, "!=": CompareOp.NOT_EQUAL,
       ">": CompareOp.GREATER, "<": CompareOp.LESS}
FAILURE_SEPARATORS = ("else", "--")

_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\'|[^\s()"\']+'
_COMPARE = re.compile(
    rf"^(?P<target>\w+)\s*\(\s*(?P<key>{_QUOTED})\s*\)\s*(?P<op>==|!=|=|>|<)\s*(?P<value>.+)$")


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedTxn:
    compares: tuple[Compare, ...]
    success: tuple[TxnOp, ...]
    failure: tuple[TxnOp, ...]


def parse_txn(lines: Iterable[str]) -> ParsedTxn:
    """The transaction ``lines`` describe; InvalidArgument naming the line if they are wrong."""
    compares: list[Compare] = []
    success: list[TxnOp] = []
    failure: list[TxnOp] = []
    section = "compares"
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            word = line.split(None, 1)[0]
            if line in FAILURE_SEPARATORS:
                if section == "failure":
                    raise InvalidArgument(f"a second {line!r}: a transaction has one else branch")
                section = "failure"
            elif line == "then":
                if section != "compares":
                    raise InvalidArgument("'then' must come right after the compares")
                section = "success"
            elif word in ("put", "del", "get"):
                if section == "compares":
                    section = "success"
                (failure if section == "failure" else success).append(parse_op(line))
            else:
                if section != "compares":
                    raise InvalidArgument("compares must come before the operations")
                compares.append(parse_compare(line))
        except InvalidArgument as err:
            raise InvalidArgument(f"txn line {number}: {err.message}: {line}") from None
    if not (compares or success or failure):
        raise InvalidArgument("empty transaction: give compares and operations, one per line")
    return ParsedTxn(compares=tuple(compares), success=tuple(success), failure=tuple(failure))


def parse_compare(line: str) -> Compare:
    m = _COMPARE.match(line)
    if m is None:
        raise InvalidArgument('expected a compare like value("key") = "v" or an operation '
                              "(put, del, get)")
    target = TARGETS.get(m["target"])
    if target is None:
        raise InvalidArgument(f"unknown compare target {m['target']!r}; expected one of "
                              "value, version, create, mod, lease")
    key = _word(m["key"])
    raw_value = m["value"].strip()
    value: bytes | int
    if target is CompareTarget.VALUE:
        value = _word(raw_value)
    else:
        try:
            value = int(raw_value)
        except ValueError:
            raise InvalidArgument(f"{m['target']} compares with an integer, "
                                  f"not {raw_value!r}") from None
    return Compare(key=key, target=target, op=OPS[m["op"]], value=value)


def parse_op(line: str) -> TxnOp:
    words = _split(line)
    verb, args = words[0], words[1:]
    if verb == "put":
        if len(args) != 2:
            raise InvalidArgument("expected: put KEY VALUE")
        return Put(key=_bytes(args[0]), value=_bytes(args[1]))
    prefix = "--prefix" in args
    args = [a for a in args if a != "--prefix"]
    if len(args) != 1 or args[0].startswith("--"):
        raise InvalidArgument(f"expected: {verb} KEY [--prefix]")
    key = _bytes(args[0])
    end = prefix_end(key) if prefix else None
    if verb == "del":
        return DeleteRange(key=key, range_end=end)
    return RangeRequest(key=key, range_end=end)


def describe_op(op: TxnOp) -> str:
    """An op as the line that would create it (for printing the responses beside it)."""
    def q(data: bytes) -> str:
        return shlex.quote(data.decode("utf-8", errors="backslashreplace"))

    if isinstance(op, Put):
        return f"put {q(op.key)} {q(op.value)}"
    verb = "del" if isinstance(op, DeleteRange) else "get"
    prefix = " --prefix" if op.range_end is not None else ""
    return f"{verb} {q(op.key)}{prefix}"


def _split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as err:  # unbalanced quotes
        raise InvalidArgument(str(err)) from None


def _word(token: str) -> bytes:
    words = _split(token)
    if len(words) != 1:
        raise InvalidArgument(f"expected one word or one quoted string, not {token!r}")
    return _bytes(words[0])


def _bytes(word: str) -> bytes:
    return word.encode("utf-8", errors="surrogateescape")
