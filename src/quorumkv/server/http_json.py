"""JSON for the HTTP API: bytes as text, results as JSON objects, request fields checked.

Keys and values are bytes in the store and strings in JSON, in the encoding
the request names with ``encoding``: ``utf8`` (the default) or ``base64``
(RFC 4648, standard alphabet with padding; the URL-safe alphabet is accepted
on the way in). Every key-value object in a response carries ``"encoding"``,
the encoding of its ``key`` and ``value``: the requested one, except that a
``utf8`` request whose stored key or value is not valid UTF-8 gets that item
in ``base64`` (both fields), so one binary item never breaks a response.

Member, cluster and lease ids are 64-bit: answers write them as strings of
their digits (JavaScript's numbers would round them), requests may give them
as integers or as such strings; see "64-bit ids as text" below.

Requests are read as strictly as the client protocol reads its own (see
``client/fields.py``): a field of the wrong type, a negative or too large
integer, bad base64 or an unknown field is InvalidArgument naming it. JSON
bodies and query strings go through the same :class:`Fields` interface so
that the options common to both (key ranges, consistency, encoding) are
parsed once.
"""

from __future__ import annotations

import abc
import base64
import binascii
import json
import math
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

from aiohttp import web

from quorumkv.client.fields import MAX_INT64, brief, type_name
from quorumkv.errors import InvalidArgument
from quorumkv.kv.keys import ALL_KEYS, prefix_end

ENCODINGS: Final = ("utf8", "base64")
READ_LEVELS: Final = ("one", "session", "quorum", "all")
WRITE_LEVELS: Final = ("one", "quorum", "all")

MAX_QUERY_FIELDS: Final = 32
_EXACT_FLOAT: Final = 1 << 53
_DIGITS = re.compile(r"[0-9]{1,19}")
_URLSAFE = str.maketrans("-_", "+/")

ID_PATTERN: Final = "^(0|[1-9][0-9]{0,18})$"
"""An id as text: its decimal digits, without sign or leading zeros (as answers write it)."""
_ID_DIGITS = re.compile(ID_PATTERN.removeprefix("^").removesuffix("$"))
ID_DETAILS: Final = ("leader", "lease")
"""The error details that carry an id (NotLeader's leader, LeaseNotFound's lease)."""
EVENT_ID_FIELDS: Final = ("id", "cluster_id", "lease")
"""The fields of an event (server/events.py) that carry an id."""


# -- bytes <-> text ------------------------------------------------------------------


def to_bytes(text: str, encoding: str, what: str) -> bytes:
    """The bytes a request's string stands for; InvalidArgument naming ``what`` if none."""
    if encoding == "base64":
        try:
            return base64.b64decode(text.translate(_URLSAFE), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{what!r} is not valid base64: {brief(text)}") from None
    return check_text(text, what).encode("utf-8")


def check_text(value: str, what: str) -> str:
    """``value`` if it is valid Unicode: JSON's \\u escapes (and percent-encoded query
    strings) can carry lone surrogates, which no UTF-8 encoder, msgpack's included, takes."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument(f"{what!r} is not valid Unicode text (it holds a lone "
                              f"surrogate); send binary data with encoding=base64") from None
    return value


def _text(data: bytes, encoding: str) -> str:
    return data.decode("utf-8") if encoding == "utf8" else base64.b64encode(data).decode()


def kv_json(kv: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """A protocol kv map (bytes key and value) as a JSON object with its ``encoding``,
    its lease id as text."""
    used = encoding
    try:
        key, value = _text(kv["key"], used), _text(kv["value"], used)
    except UnicodeDecodeError:
        used = "base64"
        key, value = _text(kv["key"], used), _text(kv["value"], used)
    out = {**kv, "key": key, "value": value, "encoding": used}
    if "lease" in out:
        out["lease"] = id_text(out["lease"])
    return out


def key_json(key: bytes, encoding: str) -> dict[str, str]:
    """A bare key (a lease's attached keys) as ``{"key", "encoding"}``."""
    try:
        return {"key": _text(key, encoding), "encoding": encoding}
    except UnicodeDecodeError:
        return {"key": _text(key, "base64"), "encoding": "base64"}


def _optional_kv(kv: Mapping[str, Any] | None, encoding: str) -> dict[str, Any] | None:
    return None if kv is None else kv_json(kv, encoding)


def result_json(result: Mapping[str, Any], encoding: str) -> dict[str, Any]:
    """A protocol result map (put, delete, range, txn, event...) with its bytes as text."""
    out = dict(result)
    if "kvs" in out:
        out["kvs"] = [kv_json(kv, encoding) for kv in out["kvs"]]
    if "prev_kvs" in out:
        out["prev_kvs"] = [kv_json(kv, encoding) for kv in out["prev_kvs"]]
    if "kv" in out:
        out["kv"] = _optional_kv(out["kv"], encoding)
    if "prev_kv" in out:
        out["prev_kv"] = _optional_kv(out["prev_kv"], encoding)
    if "responses" in out:
        out["responses"] = [result_json(r, encoding) for r in out["responses"]]
    return out


# -- 64-bit ids as text --------------------------------------------------------------
#
# Member, cluster and lease ids are 64-bit integers (63 bits in practice). As JSON numbers
# they lose their last digits in JavaScript, whose numbers are exact to 2**53 only, so an
# answer writes every id as a string of its decimal digits, as etcd's JSON gateway does for
# its int64 fields. Counters and positions (revisions, indexes, terms, versions, counts)
# stay numbers. A request may give an id either way (BodyFields.identifier).


def id_text(value: Any) -> Any:
    """An id (an int) as its decimal digits; anything else (None: no id) as it is."""
    return str(value) if type(value) is int else value


def member_json(member: Mapping[str, Any]) -> dict[str, Any]:
    """A member map (membership.member_wire, member_status) with its id as text."""
    out = dict(member)
    if "id" in out:
        out["id"] = id_text(out["id"])
    return out


def raft_json(node: Mapping[str, Any]) -> dict[str, Any]:
    """A node's Raft state (``Node.status()["node"]``) with its ids as text: its own, the
    leader's (``"0"``: none known), the cluster's, the voters', the learners' and the keys
    of ``progress``."""
    out = dict(node)
    for name in ("id", "leader", "cluster_id"):
        if name in out:
            out[name] = id_text(out[name])
    for name in ("voters", "learners"):
        if isinstance(out.get(name), list):
            out[name] = [id_text(i) for i in out[name]]
    progress = out.get("progress")
    if isinstance(progress, Mapping):
        out["progress"] = {str(k): v for k, v in progress.items()}
    return out


def cluster_json(body: Mapping[str, Any]) -> dict[str, Any]:
    """A cluster answer (status, member list, membership change, or the leader's view in
    a status) with its ids as text. Its ``leader`` is a member's name, left as it is."""
    out = dict(body)
    if "cluster_id" in out:
        out["cluster_id"] = id_text(out["cluster_id"])
    for name in ("member", "removed"):
        if isinstance(out.get(name), Mapping):
            out[name] = member_json(out[name])
    if isinstance(out.get("members"), list):
        out["members"] = [member_json(m) if isinstance(m, Mapping) else m
                          for m in out["members"]]
    if isinstance(out.get("node"), Mapping):
        out["node"] = raft_json(out["node"])
    if isinstance(out.get("leader_view"), Mapping):
        out["leader_view"] = cluster_json(out["leader_view"])
    return out


def lease_json(body: Mapping[str, Any]) -> dict[str, Any]:
    """A lease answer (grant, keep-alive, time-to-live, list) with its lease ids as text."""
    out = dict(body)
    if "id" in out:
        out["id"] = id_text(out["id"])
    if isinstance(out.get("leases"), list):
        out["leases"] = [{**lease, "id": id_text(lease.get("id"))} for lease in out["leases"]]
    return out


def error_json(error: Mapping[str, Any]) -> dict[str, Any]:
    """An error map (``QuorumKVError.to_dict()``) with the ids among its details as text."""
    details = dict(error.get("details") or {})
    for name in ID_DETAILS:
        if name in details:
            details[name] = id_text(details[name])
    return {**error, "details": details}


def event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event of the feed (server/events.py) with the ids among its fields as text."""
    fields = dict(event.get("fields") or {})
    for name in EVENT_ID_FIELDS:
        if name in fields:
            fields[name] = id_text(fields[name])
    return {**event, "fields": fields}


def json_safe(obj: object) -> Any:
    """``obj`` with nothing JSON cannot carry: string keys, lists for tuples and sets,
    None for non-finite floats, text for bytes (UTF-8, else base64) and anything else."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, bytes):
        try:
            return obj.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode()
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    value = getattr(obj, "value", None)  # an enum
    return json_safe(value) if isinstance(value, (str, int)) else str(obj)


def dumps(obj: object) -> str:
    # allow_nan=False: Python would otherwise write NaN/Infinity, which is not JSON.
    return json.dumps(obj, allow_nan=False, separators=(",", ":"))


def json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    return web.json_response(dict(body), status=status, dumps=dumps)


# -- reading requests ----------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidArgument(f"field {brief(key)} is given twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise InvalidArgument(f"{name} is not a JSON number")


async def read_body(request: web.Request) -> BodyFields:
    """The request's JSON object. aiohttp refuses a body above ``max_http_body_bytes``
    with 413 while reading it."""
    raw = await request.read()
    if not raw.strip():
        raise InvalidArgument("this request needs a JSON object as its body ({} for every "
                              "default)")
    try:
        obj = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArgument("the JSON body is nested too deeply") from None
    except ValueError as err:  # JSONDecodeError, bad UTF-8, a number too long to convert
        raise InvalidArgument(f"the body is not valid JSON: {err}") from None
    if type(obj) is not dict:
        raise InvalidArgument(f"the body must be a JSON object, not {_json_type(obj)}")
    return BodyFields(obj)


def _json_type(obj: object) -> str:
    names = {dict: "object", list: "array", str: "string", int: "integer", float: "number",
             bool: "boolean", type(None): "null"}
    return names.get(type(obj), type_name(obj))


class Fields(abc.ABC):
    """Typed, checked access to a request's fields; :meth:`finish` refuses unknown ones."""

    @abc.abstractmethod
    def optional_string(self, name: str) -> str | None: ...

    def string(self, name: str, default: str | None = None) -> str:
        value = self.optional_string(name)
        if value is None:
            if default is None:
                raise self.fail(f"missing field {name!r}")
            return default
        return value

    @abc.abstractmethod
    def integer(self, name: str, default: int | None = None, *, low: int = 0,
                high: int = MAX_INT64) -> int: ...

    @abc.abstractmethod
    def boolean(self, name: str, default: bool = False) -> bool: ...

    def choice(self, name: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.fail(f"{name!r} must be one of {', '.join(choices)}, not {brief(value)}")
        return value

    @abc.abstractmethod
    def fail(self, message: str) -> InvalidArgument: ...

    @abc.abstractmethod
    def finish(self) -> None: ...


class BodyFields(Fields):
    """The fields of a JSON object (a body, or an object nested in one). An explicit
    ``null`` is refused wherever a value is expected, unless the field is nullable."""

    def __init__(self, obj: object, what: str = "body") -> None:
        self._what = what
        if type(obj) is not dict:
            raise self.fail(f"must be a JSON object, not {_json_type(obj)}")
        self.obj: dict[str, Any] = obj
        self._read: set[str] = set()

    def fail(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"{self._what}: {message}")

    def raw(self, name: str) -> Any:
        """The field as parsed, None if absent (a present null is refused)."""
        self._read.add(name)
        if name not in self.obj:
            return None
        value = self.obj[name]
        if value is None:
            raise self.fail(f"{name!r} must not be null (leave it out for its default)")
        return value

    def optional_string(self, name: str, *, nullable: bool = False) -> str | None:
        if nullable and self.obj.get(name, "") is None:
            self._read.add(name)
            return None
        value = self.raw(name)
        if value is None:
            return None
        if type(value) is not str:
            raise self.fail(f"{name!r} must be a string, not {_json_type(value)}")
        return check_text(value, name)

    def integer(self, name: str, default: int | None = None, *, low: int = 0,
                high: int = MAX_INT64) -> int:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise self.fail(f"missing field {name!r}")
            return default
        if type(value) is float and value.is_integer() and abs(value) <= _EXACT_FLOAT:
            # JSON has one number type; 5.0 is the integer 5 (as in JSON Schema). Beyond
            # 2**53 a float may not be the number that was written, so it is refused.
            value = int(value)
        if type(value) is not int or not low <= value <= high:
            raise self.fail(f"{name!r} must be an integer between {low} and {high}, "
                            f"not {_json_type(value)} {brief(value)}")
        return value

    def identifier(self, name: str, default: int | None = None, *, low: int = 0) -> int:
        """A 64-bit id: an integer, or its decimal digits as a string (what answers send,
        and what a JavaScript client can hold exactly)."""
        value = self.raw(name)
        if type(value) is not str:
            return self.integer(name, default, low=low)
        number = int(value) if _ID_DIGITS.fullmatch(value) else None
        if number is None or not low <= number <= MAX_INT64:
            raise self.fail(f"{name!r} must be an id between {low} and {MAX_INT64}, as an "
                            f"integer or a string of its digits, not {brief(value)}")
        return number

    def boolean(self, name: str, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if type(value) is not bool:
            raise self.fail(f"{name!r} must be true or false, not {_json_type(value)}")
        return value

    def array(self, name: str) -> list[Any]:
        value = self.raw(name)
        if value is None:
            return []
        if type(value) is not list:
            raise self.fail(f"{name!r} must be an array, not {_json_type(value)}")
        return value

    def finish(self) -> None:
        """Refuse unknown fields: a misspelt option must not be silently ignored."""
        unknown = [k for k in self.obj if k not in self._read]
        if unknown:
            names = ", ".join(brief(k) for k in unknown[:5])
            raise self.fail(f"unknown field{'s' if len(unknown) > 1 else ''} {names}")


class QueryFields(Fields):
    """The parameters of a request's query string; each may be given once.

    The raw query is decoded here, strictly: aiohttp would turn percent-encoded
    bytes that are not UTF-8 into U+FFFD, silently naming another key.
    """

    def __init__(self, request: web.Request) -> None:
        self._read: set[str] = set()
        try:
            pairs = urllib.parse.parse_qsl(request.rel_url.raw_query_string,
                                           keep_blank_values=True, errors="strict",
                                           max_num_fields=MAX_QUERY_FIELDS)
        except UnicodeDecodeError:
            raise self.fail("the query string is not UTF-8 once percent-decoded; send "
                            "binary keys with encoding=base64") from None
        except ValueError:
            raise self.fail(f"more than {MAX_QUERY_FIELDS} parameters") from None
        self._query: dict[str, str] = {}
        for name, value in pairs:
            if name in self._query:
                raise self.fail(f"parameter {brief(name)} is given more than once")
            self._query[name] = value

    def fail(self, message: str) -> InvalidArgument:
        return InvalidArgument(f"query: {message}")

    def optional_string(self, name: str) -> str | None:
        self._read.add(name)
        value = self._query.get(name)
        return None if value is None else check_text(value, name)

    def integer(self, name: str, default: int | None = None, *, low: int = 0,
                high: int = MAX_INT64) -> int:
        text = self.optional_string(name)
        if text is None:
            if default is None:
                raise self.fail(f"missing parameter {name!r}")
            return default
        value = int(text) if _DIGITS.fullmatch(text) else None
        if value is None or not low <= value <= high:
            raise self.fail(f"{name!r} must be an integer between {low} and {high}, "
                            f"not {brief(text)}")
        return value

    def boolean(self, name: str, default: bool = False) -> bool:
        text = self.optional_string(name)
        if text is None:
            return default
        if text not in ("true", "false"):
            raise self.fail(f"{name!r} must be true or false, not {brief(text)}")
        return text == "true"

    def finish(self) -> None:
        unknown = sorted(set(self._query) - self._read)
        if unknown:
            names = ", ".join(brief(k) for k in unknown[:5])
            raise self.fail(f"unknown parameter{'s' if len(unknown) > 1 else ''} {names}")


# -- options shared by many routes ---------------------------------------------------


def read_encoding(f: Fields) -> str:
    return f.choice("encoding", ENCODINGS, "utf8")


def read_bytes(f: Fields, name: str, encoding: str, default: bytes | None = None) -> bytes:
    text = f.optional_string(name)
    if text is None:
        if default is None:
            raise f.fail(f"missing field {name!r}")
        return default
    return to_bytes(text, encoding, name)


def read_key_range(f: Fields, encoding: str) -> tuple[bytes, bytes | None]:
    """``(key, range_end)`` in etcd's convention from ``key`` with at most one of
    ``range_end``, ``prefix=true`` or ``from_key=true``.

    An empty ``key`` with ``prefix`` or ``from_key`` selects every key; an empty
    ``range_end`` is no range end (the one key), as in etcd.
    """
    key = read_bytes(f, "key", encoding, b"")
    end = read_bytes(f, "range_end", encoding, b"") or None
    prefix = f.boolean("prefix")
    from_key = f.boolean("from_key")
    if (end is not None) + prefix + from_key > 1:
        raise f.fail("give at most one of range_end, prefix=true and from_key=true")
    if prefix:
        # The empty key is not a key, so b"\0" is the smallest one there is.
        return (key, prefix_end(key)) if key else (b"\x00", ALL_KEYS)
    if from_key:
        return key or b"\x00", ALL_KEYS
    if not key:
        raise f.fail("'key' must not be empty (prefix=true with an empty key selects "
                     "every key)")
    if end is not None and end != ALL_KEYS and end < key:
        raise f.fail("'range_end' sorts before 'key'")
    return key, end

