"""Which node the client talks to: the endpoint list, rotation, leader hints and backoff."""

from __future__ import annotations

import random
from collections.abc import Sequence

from quorumkv.errors import InvalidArgument

Endpoint = tuple[str, int]


def parse_endpoint(text: str) -> Endpoint:
    """``"host:port"`` (or ``"[v6 address]:port"``) to ``(host, port)``; InvalidArgument if not."""
    if not isinstance(text, str):
        raise InvalidArgument(f"an endpoint is a 'host:port' string, not {type(text).__name__}")
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(f"malformed endpoint {text!r:.80}: expected 'host:port'")
    return host, int(port_text)


def format_endpoint(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoints:
    """The nodes a client may contact, and the one it uses now.

    A leader hint may name a node missing from the configured list (it joined
    later); it is added, so that rotating after it fails still reaches it.
    """

    __slots__ = ("_current", "_list")

    def __init__(self, endpoints: Sequence[str]) -> None:
        if isinstance(endpoints, str) or not endpoints:
            raise InvalidArgument("endpoints must be a non-empty list of 'host:port' strings")
        self._list: list[Endpoint] = []
        for text in endpoints:
            endpoint = parse_endpoint(text)
            if endpoint not in self._list:
                self._list.append(endpoint)
        self._current = 0

    def __len__(self) -> int:
        return len(self._list)

    @property
    def current(self) -> Endpoint:
        return self._list[self._current]

    def rotate_from(self, endpoint: Endpoint) -> None:
        """Move past ``endpoint`` if it is still the current one.

        Many pipelined requests see the same failure; keying the move on the
        failed endpoint makes them move once, not once each.
        """
        if self.current == endpoint:
            self._current = (self._current + 1) % len(self._list)

    def prefer(self, endpoint: Endpoint) -> None:
        if endpoint not in self._list:
            self._list.append(endpoint)
        self._current = self._list.index(endpoint)


class Backoff:
    """Exponential backoff with jitter (half to all of each step): clients do not retry in step."""

    __slots__ = ("_base", "_cap", "_rng")

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self._base = base
        self._cap = cap
        self._rng = rng

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        ceiling = min(self._cap, self._base * (2 ** min(attempt - 1, 30)))
        return self._rng.uniform(ceiling / 2, ceiling)
