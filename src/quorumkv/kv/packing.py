"""msgpack behind a typed wall: the one place the kv package touches the library.

msgpack ships no type information, so this module gives the rest of the
package two typed functions and turns every way decoding can fail into
:class:`ValueError`; callers say whose fault it was (a bad command is
InvalidArgument, a bad record on disk is StorageError).
"""

from __future__ import annotations

import msgpack  # type: ignore[import-untyped, unused-ignore]


def pack(obj: object) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


def unpack(data: bytes) -> object:
    """Decode one msgpack value, with no trailing bytes; raise ValueError if malformed.

    Strings decode to str and binaries to bytes, so a decoder can tell them
    apart; ext types come back as opaque objects that no field accepts.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"expected bytes, not {type(data).__name__}")
    try:
        obj: object = msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True)
    # msgpack documents ValueError subclasses for malformed input and "other
    # exceptions" beyond them; bytes from the network may trigger any.
    except (ValueError, TypeError, OverflowError, RecursionError) as err:
        raise ValueError(f"malformed msgpack: {err}") from err
    return obj
