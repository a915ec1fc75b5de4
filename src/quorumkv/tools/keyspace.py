"""The benchmark's keys and values: a fixed key space and how requests pick from it.

Keys are ``prefix`` followed by a zero-padded index, so all have the size
asked for and sort in index order (a range scan from key ``i`` reads keys
``i, i+1, ...``). A request picks an index uniformly, or from a Zipf law in
which index 0 is the hottest key (rank 1), index 1 the next, and so on:
hot keys are neighbours, as hot rows often are in a real table.

Every draw takes the caller's ``random.Random``, never the global one, so a
seeded run draws the same keys in the same order in each worker.
"""

from __future__ import annotations

import math
import random
from typing import Protocol

from quorumkv.errors import InvalidArgument

KEY_DISTRIBUTIONS = ("uniform", "zipfian")
_LETTERS = b"abcdefghijklmnopqrstuvwxyz0123456789"


def min_key_size(prefix: bytes, count: int) -> int:
    return len(prefix) + len(str(count - 1))


def make_keys(prefix: bytes, count: int, size: int) -> list[bytes]:
    """``count`` distinct keys of exactly ``size`` bytes, in index order."""
    need = min_key_size(prefix, count)
    if size < need:
        raise InvalidArgument(f"a key size of {size} cannot hold {count} distinct keys: "
                              f"it must be at least {need}")
    width = size - len(prefix)
    return [prefix + str(i).zfill(width).encode() for i in range(count)]


def make_value(size: int, rng: random.Random) -> bytes:
    """Printable, so a value read back by ``quorumkv get`` is legible."""
    return bytes(rng.choice(_LETTERS) for _ in range(size))


class KeyChooser(Protocol):
    def index(self, rng: random.Random) -> int:
        """An index in ``[0, count)``."""
        ...


class UniformKeys:
    __slots__ = ("count",)

    def __init__(self, count: int) -> None:
        self.count = count

    def index(self, rng: random.Random) -> int:
        return rng.randrange(self.count)


class ZipfSampler:
    """Ranks ``1..n`` with P(k) proportional to ``k ** -s``, for any ``s > 0``.

    Rejection-inversion sampling (W. Hörmann and G. Derflinger, "Rejection-
    inversion to generate variates from monotone discrete distributions",
    1996), as Apache Commons RNG does it: exact, O(1) expected time per draw
    and no table, so the key space may have millions of keys. The common
    shortcut of YCSB's generator (Gray et al.) is only approximate away from
    the first ranks, which matters when the distribution is what is measured.

    The idea: ``h(x) = x ** -s`` is decreasing, so the area under it from 0.5
    to n + 0.5 can be inverted in closed form (``H`` and ``H^-1`` below).
    A uniform point of that area gives an x; rounding it gives a candidate
    rank k, accepted when the point also lies under the step of height h(k)
    over [k - 0.5, k + 0.5]. For s near 1 the closed forms divide by
    ``1 - s``, hence the two helpers that stay exact as their argument goes
    to zero.
    """

    __slots__ = ("_h_integral_n", "_h_integral_x1", "_squeeze", "n", "s")

    def __init__(self, n: int, s: float) -> None:
        if n < 1:
            raise InvalidArgument("a Zipf law needs at least one rank")
        if not s > 0 or not math.isfinite(s):
            raise InvalidArgument(f"the Zipf exponent must be positive, not {s}")
        self.n = n
        self.s = s
        self._h_integral_x1 = self._h_integral(1.5) - 1.0
        self._h_integral_n = self._h_integral(n + 0.5)
        # Below this distance from a rank's centre a candidate is accepted without
        # evaluating H: the step always covers that part of the area.
        self._squeeze = 2.0 - self._h_integral_inverse(self._h_integral(2.5) - self._h(2.0))

    def sample(self, rng: random.Random) -> int:
        n = self.n
        while True:
            u = self._h_integral_n + rng.random() * (self._h_integral_x1 - self._h_integral_n)
            x = self._h_integral_inverse(u)
            k = int(x + 0.5)
            if k < 1:
                k = 1
            elif k > n:
                k = n
            if k - x <= self._squeeze or u >= self._h_integral(k + 0.5) - self._h(k):
                return k

    def probability(self, k: int) -> float:
        """The exact P(rank k), for tests and documentation (O(n))."""
        norm = math.fsum(i ** -self.s for i in range(1, self.n + 1))
        return float(k ** -self.s / norm)

    def _h(self, x: float) -> float:
        return math.exp(-self.s * math.log(x))

    def _h_integral(self, x: float) -> float:
        log_x = math.log(x)
        return _expm1_over_x((1.0 - self.s) * log_x) * log_x

    def _h_integral_inverse(self, x: float) -> float:
        t = x * (1.0 - self.s)
        t = max(t, -1.0)  # rounding can push it just past the pole at -1
        return math.exp(_log1p_over_x(t) * x)


def _log1p_over_x(x: float) -> float:
    if abs(x) > 1e-8:
        return math.log1p(x) / x
    return 1.0 - x * (0.5 - x * (1.0 / 3.0 - 0.25 * x))


def _expm1_over_x(x: float) -> float:
    if abs(x) > 1e-8:
        return math.expm1(x) / x
    return 1.0 + x * 0.5 * (1.0 + x / 3.0 * (1.0 + 0.25 * x))


class ZipfianKeys:
    __slots__ = ("_sampler", "count")

    def __init__(self, count: int, s: float) -> None:
        self.count = count
        self._sampler = ZipfSampler(count, s)

    def index(self, rng: random.Random) -> int:
        return self._sampler.sample(rng) - 1


def key_chooser(distribution: str, count: int, zipf_s: float) -> KeyChooser:
    if distribution == "uniform":
        return UniformKeys(count)
    if distribution == "zipfian":
        return ZipfianKeys(count, zipf_s)
    raise InvalidArgument(f"unknown key distribution {distribution!r}: expected "
                          f"{' or '.join(KEY_DISTRIBUTIONS)}")
