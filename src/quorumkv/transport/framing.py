"""Length-prefixed frames: a 4-byte big-endian length, then that many bytes.

The decoder is sans-I/O (bytes in, frames out), so the same code serves
asyncio streams, tests and fuzzers. A declared length above the limit is
refused *before* any of the body is buffered: a peer cannot make us allocate
more than ``max_frame`` bytes by lying about a length.
"""

from __future__ import annotations

import struct

from quorumkv.errors import MessageTooLarge

HEADER = struct.Struct(">I")
DEFAULT_MAX_FRAME = 16 << 20


# The wire's name for it; kept here because framing is where it is raised.
FrameTooLarge = MessageTooLarge


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise FrameTooLarge(f"frame of {len(payload)} bytes exceeds the limit of {max_frame}",
                            size=len(payload), limit=max_frame)
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    __slots__ = ("_buffer", "_max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._max_frame = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every frame now complete, in order."""
        self._buffer += data
        frames: list[bytes] = []
        buf = self._buffer
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length > self._max_frame:
                raise FrameTooLarge(
                    f"peer announced a frame of {length} bytes; the limit is {self._max_frame}",
                    size=length, limit=self._max_frame)
            end = pos + HEADER.size + length
            if len(buf) < end:
                break
            frames.append(bytes(buf[pos + HEADER.size:end]))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buffer)
