"""Typed reads of decoded msgpack maps: each field's type and range checked, errors naming it.

msgpack gives back untyped objects. Both ends of the client protocol read
maps through :class:`FieldReader`, which raises the error class its caller
chose: the server answers a bad request with InvalidArgument (the client's
fault), the client treats a bad response as ProtocolError (the server's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from quorumkv.errors import QuorumKVError

MAX_INT64: Final = (1 << 63) - 1
"""Revisions, ids, sequence numbers and limits are signed 64-bit on the wire: never negative."""
MAX_UINT64: Final = (1 << 64) - 1
"""Raft terms and indexes are unsigned 64-bit."""


class _Missing:
    __slots__ = ()


REQUIRED: Final = _Missing()
"""The default of a field that must be present."""


def type_name(obj: object) -> str:
    # Wire-level names: a client in another language knows "binary", not "bytes".
    names = {bytes: "binary", str: "string", int: "integer", bool: "boolean",
             list: "array", dict: "map", float: "float", type(None): "nil"}
    return names.get(type(obj), type(obj).__name__)


def brief(value: object, limit: int = 40) -> str:
    """A short printable form of an untrusted value: never the repr of a 4 MiB blob."""
    if isinstance(value, (str, bytes)):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    if value is None or isinstance(value, (bool, int, float)):
        return repr(value)
    return type_name(value)


class FieldReader:
    """One map's fields, read once each; :meth:`finish` refuses fields nobody read."""

    __slots__ = ("_error", "_map", "_read", "_what")

    def __init__(self, obj: object, what: str, error: type[QuorumKVError]) -> None:
        if type(obj) is not dict:
            raise error(f"{what} must be a map, not {type_name(obj)}")
        self._map: dict[Any, Any] = obj
        self._what = what
        self._error = error
        self._read: set[str] = set()

    def fail(self, message: str) -> QuorumKVError:
        return self._error(f"{self._what}: {message}")

    def _get(self, name: str, default: object) -> tuple[bool, Any]:
        """``(present, value)``; raises if absent and required."""
        self._read.add(name)
        if name in self._map:
            return True, self._map[name]
        if default is REQUIRED:
            raise self.fail(f"missing field {name!r}")
        return False, default

    def integer(self, name: str, default: int | _Missing = REQUIRED, *,
                high: int = MAX_INT64) -> int:
        present, value = self._get(name, default)
        # bool is an int subclass; True where a revision belongs is a bug, not 1.
        if present and (type(value) is not int or not 0 <= value <= high):
            raise self.fail(f"{name!r} must be an integer between 0 and {high}, "
                            f"not {type_name(value)} {brief(value)}")
        assert isinstance(value, int)
        return value

    def boolean(self, name: str, default: bool | _Missing = REQUIRED) -> bool:
        present, value = self._get(name, default)
        if present and type(value) is not bool:
            raise self.fail(f"{name!r} must be a boolean, not {type_name(value)}")
        assert isinstance(value, bool)
        return value

    def binary(self, name: str, default: bytes | _Missing = REQUIRED) -> bytes:
        present, value = self._get(name, default)
        if present and type(value) is not bytes:
            raise self.fail(f"{name!r} must be binary, not {type_name(value)}")
        assert isinstance(value, bytes)
        return value

    def optional_binary(self, name: str) -> bytes | None:
        present, value = self._get(name, None)
        if present and value is not None and type(value) is not bytes:
            raise self.fail(f"{name!r} must be binary or nil, not {type_name(value)}")
        assert value is None or isinstance(value, bytes)
        return value

    def string(self, name: str, default: str | _Missing = REQUIRED) -> str:
        present, value = self._get(name, default)
        if present and type(value) is not str:
            raise self.fail(f"{name!r} must be a string, not {type_name(value)}")
        assert isinstance(value, str)
        return value

    def choice(self, name: str, choices: Sequence[str], default: str | _Missing = REQUIRED) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise self.fail(f"{name!r} must be one of {', '.join(choices)}, not {brief(value)}")
        return value

    def raw(self, name: str) -> Any:
        """The field as decoded (None if absent), for a caller that checks it itself."""
        return self._get(name, None)[1]

    def array(self, name: str) -> list[Any]:
        _, value = self._get(name, REQUIRED)
        if type(value) is not list:
            raise self.fail(f"{name!r} must be an array, not {type_name(value)}")
        return value

    def mapping(self, name: str) -> dict[str, Any]:
        _, value = self._get(name, REQUIRED)
        if type(value) is not dict or not all(type(k) is str for k in value):
            raise self.fail(f"{name!r} must be a map with string keys, not {type_name(value)}")
        return value

    def finish(self) -> None:
        """Refuse unknown fields: a misspelt option must not be silently ignored."""
        unknown = [k for k in self._map if k not in self._read]
        if unknown:
            names = ", ".join(brief(k) for k in unknown[:5])
            raise self.fail(f"unknown field{'s' if len(unknown) > 1 else ''} {names}")
