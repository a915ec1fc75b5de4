"""Hypothesis strategies shared by the fuzzers: msgpack values, request and message shapes."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import strategies as st

from quorumkv.client.protocol import OPS
from quorumkv.transport.peer_codec import VERSION

FIELD_NAMES = ["key", "range_end", "limit", "revision", "keys_only", "count_only",
               "consistency", "min_revision", "min_index", "cmd", "client_id", "seq",
               "local", "index", "name", "peer_address", "client_address", "learner",
               "token", "start_revision", "prev_kv", "progress_notify", "watch_id", "id",
               "keys"]
"""Every field name of the client protocol's requests."""

INTS = st.one_of(st.integers(-3, 300), st.integers(-(1 << 63), (1 << 64) - 1),
                  st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, (1 << 63) - 1, 1 << 63,
                                   (1 << 64) - 1, -1, -(1 << 63)]))
_SCALARS = st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=True),
                     st.text(max_size=20), st.binary(max_size=20))


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.text(max_size=12), st.sampled_from(FIELD_NAMES))
    return st.one_of(st.lists(children, max_size=6),
                     st.dictionaries(keys, children, max_size=6))


MSGPACK_VALUES = st.recursive(_SCALARS, _containers, max_leaves=25)
"""Any value msgpack can carry (map keys are strings, as the decoders demand)."""


def _field_value() -> st.SearchStrategy[Any]:
    return st.one_of(MSGPACK_VALUES, st.sampled_from(["one", "quorum", "all", "session", ""]),
                     COMMAND_BYTES)


# Commands shaped like the log encoding (tag first), with fields of any type.
_COMMAND_SHAPES = st.recursive(
    st.one_of(_SCALARS, st.builds(lambda tag, rest: [tag, *rest],
                                  st.integers(0, 9), st.lists(_SCALARS, max_size=7))),
    lambda children: st.builds(lambda tag, rest: [tag, *rest], st.integers(0, 9),
                               st.lists(st.one_of(children, st.lists(children, max_size=4)),
                                        max_size=7)),
    max_leaves=20)
COMMAND_BYTES = st.one_of(st.binary(max_size=64),
                          _COMMAND_SHAPES.map(lambda v: msgpack.packb(v, use_bin_type=True)))
"""Bytes for a log command: random, or msgpack shaped like one."""


def request_shaped(ops: tuple[str, ...] | list[str] = OPS) -> st.SearchStrategy[list[Any]]:
    """``[request_id, op, args]`` with these op names (or any value), field names and
    values of every type."""
    return st.builds(
        lambda rid, op, args: [rid, op, args],
        st.one_of(INTS, MSGPACK_VALUES),
        st.one_of(st.sampled_from(ops), MSGPACK_VALUES),
        st.one_of(st.dictionaries(st.sampled_from(FIELD_NAMES), st.deferred(_field_value),
                                  max_size=8), MSGPACK_VALUES))


REQUEST_SHAPED = request_shaped()


def peer_shaped(header: st.SearchStrategy[list[Any]] | None = None,
                ) -> st.SearchStrategy[list[Any]]:
    """Raft messages ``[kind, version, group, src, dst, term, *fields]``, fields of any type;
    ``header`` draws ``[group, src, dst, term]``."""
    if header is None:
        header = st.lists(st.one_of(INTS, MSGPACK_VALUES), min_size=4, max_size=4)
    return st.builds(
        lambda kind, version, head, fields: [kind, version, *head, *fields],
        st.one_of(st.integers(0, 11), MSGPACK_VALUES),
        st.one_of(st.just(VERSION), MSGPACK_VALUES),
        header,
        _PEER_FIELDS)


_PEER_FIELDS = st.lists(
    st.one_of(MSGPACK_VALUES,
              st.lists(st.lists(st.one_of(INTS, st.binary(max_size=8)), max_size=5),
                       max_size=4)),
    max_size=5)
"""Message fields: any values, or lists of entry-like lists."""

PEER_SHAPED = peer_shaped()
