"""Fuzzing every decoder of untrusted bytes: only the documented error, whatever comes in.

- transport/framing.py FrameDecoder: FrameTooLarge (a ProtocolError) only; it never holds
  more than one incomplete frame (``max_frame`` + header); frames survive any chunking.
- client/protocol.py parse_request / decode_request: InvalidArgument only;
  request_id_of never raises.
- transport/peer_codec.py decode_message: ProtocolError only.
- kv/codec.py decode_command: InvalidArgument only.
"""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import COMMAND_BYTES, MSGPACK_VALUES, PEER_SHAPED, REQUEST_SHAPED

from quorumkv.client.protocol import decode_request, parse_request, request_id_of
from quorumkv.errors import InvalidArgument, ProtocolError
from quorumkv.kv.codec import decode_command
from quorumkv.transport.framing import HEADER, FrameDecoder, FrameTooLarge, encode_frame
from quorumkv.transport.peer_codec import decode_message

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

def _pack(value: object) -> bytes:
    data = msgpack.packb(value, use_bin_type=True)
    assert isinstance(data, bytes)
    return data


# -- framing ------------------------------------------------------------------------------


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for p in [*points, len(data)]:
        out.append(data[last:p])
        last = p
    return out


def _reference_frames(data: bytes, max_frame: int) -> tuple[list[bytes], bool]:
    """Frames in ``data`` and whether an oversized length is announced, by a plain loop."""
    frames, pos = [], 0
    while len(data) - pos >= HEADER.size:
        (length,) = HEADER.unpack_from(data, pos)
        if length > max_frame:
            return frames, True
        if len(data) - pos - HEADER.size < length:
            break
        frames.append(data[pos + HEADER.size:pos + HEADER.size + length])
        pos += HEADER.size + length
    return frames, False


@FUZZ
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 1000), max_size=30),
       max_frame=st.integers(0, 300))
def test_frame_decoder_on_arbitrary_bytes_raises_only_frame_too_large(
        data: bytes, cuts: list[int], max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    got: list[bytes] = []
    too_large = False
    for chunk in _chunks(data, cuts):
        try:
            got.extend(decoder.feed(chunk))
        except FrameTooLarge:
            too_large = True
            break
        # At most one incomplete frame is ever held: its header and at most max_frame bytes.
        assert decoder.pending < HEADER.size + max_frame
    want, want_too_large = _reference_frames(data, max_frame)
    assert too_large == want_too_large
    if too_large:
        assert got == want[:len(got)]  # frames before the bad header may or may not be out
    else:
        assert got == want
        assert decoder.pending == len(data) - sum(HEADER.size + len(f) for f in want)


@FUZZ
@given(payloads=st.lists(st.binary(max_size=200), max_size=12),
       cuts=st.lists(st.integers(0, 5000), max_size=40), trailing=st.binary(max_size=3))
def test_valid_frames_round_trip_whatever_the_chunking(
        payloads: list[bytes], cuts: list[int], trailing: bytes) -> None:
    stream = b"".join(encode_frame(p, 200) for p in payloads) + trailing
    decoder = FrameDecoder(200)
    got: list[bytes] = []
    for chunk in _chunks(stream, cuts):
        got.extend(decoder.feed(chunk))
    assert got == payloads
    assert decoder.pending == len(trailing)


def test_an_oversized_length_is_refused_before_its_body_arrives() -> None:
    decoder = FrameDecoder(10)
    with pytest.raises(FrameTooLarge) as err:
        decoder.feed(HEADER.pack(11))
    assert isinstance(err.value, ProtocolError)
    assert decoder.pending <= HEADER.size


# -- client requests --------------------------------------------------------------------------


def _parse_only_invalid_argument(obj: object) -> None:
    with contextlib.suppress(InvalidArgument):
        parse_request(obj)
    rid = request_id_of(obj)
    assert rid is None or (type(rid) is int and 0 <= rid < 1 << 63)


@FUZZ
@given(MSGPACK_VALUES)
def test_parse_request_on_any_msgpack_value_raises_only_invalid_argument(obj: object) -> None:
    _parse_only_invalid_argument(obj)


@FUZZ
@given(REQUEST_SHAPED)
def test_parse_request_on_request_shaped_values_raises_only_invalid_argument(
        obj: object) -> None:
    _parse_only_invalid_argument(obj)


@FUZZ
@given(st.one_of(st.binary(max_size=200), REQUEST_SHAPED.map(_pack), MSGPACK_VALUES.map(_pack)))
def test_decode_request_on_any_bytes_raises_only_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_request(data)


# -- peer messages --------------------------------------------------------------------------

@FUZZ
@given(st.one_of(st.binary(max_size=200), PEER_SHAPED.map(_pack), MSGPACK_VALUES.map(_pack)))
def test_decode_message_on_any_bytes_raises_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(data)


# -- log commands ---------------------------------------------------------------------------


@FUZZ
@given(st.one_of(COMMAND_BYTES, MSGPACK_VALUES.map(_pack)))
def test_decode_command_on_any_bytes_raises_only_invalid_argument(data: bytes) -> None:
    with contextlib.suppress(InvalidArgument):
        decode_command(data)
