"""Raw sockets speaking the client protocol, for tests that must control every byte."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from quorumkv.client.protocol import Request, Response, decode_response, encode_request
from quorumkv.transport.framing import FrameDecoder, encode_frame


def toml_config(tmp_path: Path, **settings: object) -> list[str]:
    """``serve`` arguments loading these NodeConfig settings from a TOML file."""
    path = tmp_path / "limits.toml"
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return ["--config", str(path)]


class RawConnection:
    def __init__(self, port: int, *, timeout: float = 10.0, source: str | None = None) -> None:
        """``source``: the local address to connect from (another loopback address, say
        127.0.0.2, is another client address to the node)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=None if source is None
                                             else (source, 0))
        self.decoder = FrameDecoder(64 << 20)
        self._frames: list[bytes] = []

    def send(self, request_id: int, req: Request) -> None:
        self.sock.sendall(encode_frame(encode_request(request_id, req)))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, timeout: float = 10.0) -> Response:
        """The next response; EOFError if the server closes the connection first."""
        deadline = time.monotonic() + timeout
        while not self._frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no response in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                data = b""
            if not data:
                raise EOFError("the server closed the connection")
            self._frames.extend(self.decoder.feed(data))
        return decode_response(self._frames.pop(0))

    def closed_by_server(self, timeout: float) -> bool:
        """True once the server closes the connection (responses before are dropped)."""
        try:
            while True:
                self.response(timeout)
        except EOFError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()
