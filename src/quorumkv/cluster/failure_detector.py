"""Phi-accrual failure detection (Hayashibara, Défago, Yared & Katayama, 2004).

Instead of a yes/no timeout, the detector says how suspicious a silence is:
``phi = -log10(P(the next heartbeat arrives later than now))``, where the
distribution of inter-arrival times is estimated from the recent history of
heartbeats from that peer (a normal distribution with the window's mean and
standard deviation). phi 1 means a 10% chance the peer is merely late,
phi 8 one in 10^8. Thresholds on phi adapt by themselves to a peer whose
heartbeats are slow or jittery (a loaded 2-core machine), where a fixed
timeout would either flap or react slowly.

Pure: time comes in as seconds from the caller's monotonic clock, so the
detector is deterministic under test and in the simulator.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

PHI_CAP = 1_000.0
"""Reported instead of infinity once the probability underflows."""


class Health(enum.Enum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    """Suspected: phi above the suspect threshold."""
    FAILED = "failed"
    """phi above the failure threshold, or silent for longer than ``max_silence``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorConfig:
    suspect_phi: float = 8.0
    failed_phi: float = 16.0
    max_silence: float = 30.0
    """Seconds of silence after which a peer is failed whatever phi says."""
    window: int = 200
    """Inter-arrival samples kept per peer."""
    min_std: float = 0.05
    """Floor on the standard deviation: perfectly regular heartbeats would
    otherwise make the first late one look infinitely suspicious."""
    acceptable_pause: float = 0.2
    """Added to the mean: a pause this long (a GC, a busy core) is normal."""
    first_interval: float = 0.5
    """Assumed interval before two heartbeats have been seen."""

    def __post_init__(self) -> None:
        if not 0 < self.suspect_phi <= self.failed_phi:
            raise ValueError("thresholds must satisfy 0 < suspect_phi <= failed_phi")
        if self.window < 2 or self.min_std <= 0 or self.first_interval <= 0:
            raise ValueError("window >= 2, min_std > 0 and first_interval > 0 are required")


class ArrivalWindow:
    """The recent inter-arrival times of one peer's heartbeats."""

    __slots__ = ("_intervals", "_last", "_sum", "_sum_sq", "_synthetic")

    def __init__(self, size: int, first_interval: float, first_arrival: float) -> None:
        self._intervals: deque[float] = deque(maxlen=size)
        self._sum = 0.0
        self._sum_sq = 0.0
        self._last = first_arrival
        # Two synthetic samples around the assumed interval give the detector a
        # sane distribution before real data exists; the first real interval
        # replaces them, so they never blur what the peer actually does.
        for sample in (first_interval * 0.75, first_interval * 1.25):
            self._add(sample)
        self._synthetic = True

    def _add(self, interval: float) -> None:
        if len(self._intervals) == self._intervals.maxlen:
            old = self._intervals[0]
            self._sum -= old
            self._sum_sq -= old * old
        self._intervals.append(interval)
        self._sum += interval
        self._sum_sq += interval * interval

    def heartbeat(self, now: float) -> None:
        interval = now - self._last
        self._last = now
        if interval > 0:
            if self._synthetic:
                self._intervals.clear()
                self._sum = self._sum_sq = 0.0
                self._synthetic = False
            self._add(interval)

    @property
    def last(self) -> float:
        return self._last

    def mean(self) -> float:
        return self._sum / len(self._intervals)

    def std(self) -> float:
        n = len(self._intervals)
        variance = max(0.0, self._sum_sq / n - (self._sum / n) ** 2)
        return math.sqrt(variance)


def phi(elapsed: float, mean: float, std: float) -> float:
    """-log10 of the probability that a heartbeat comes later than ``elapsed``."""
    z = (elapsed - mean) / (std * math.sqrt(2.0))
    p_later = 0.5 * math.erfc(z)
    if p_later <= 0.0:
        return PHI_CAP
    return min(PHI_CAP, -math.log10(p_later))


class FailureDetector:
    """One detector per node, tracking every peer it hears from."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        self._peers: dict[int, ArrivalWindow] = {}

    def heartbeat(self, peer: int, now: float) -> None:
        window = self._peers.get(peer)
        if window is None:
            cfg = self.config
            self._peers[peer] = ArrivalWindow(cfg.window, cfg.first_interval, now)
        else:
            window.heartbeat(now)

    def forget(self, peer: int) -> None:
        self._peers.pop(peer, None)

    def phi(self, peer: int, now: float) -> float | None:
        """How suspicious the peer's silence is now; None if never heard from."""
        window = self._peers.get(peer)
        if window is None:
            return None
        cfg = self.config
        return phi(now - window.last, window.mean() + cfg.acceptable_pause,
                   max(cfg.min_std, window.std()))

    def last_seen(self, peer: int, now: float) -> float | None:
        window = self._peers.get(peer)
        return None if window is None else now - window.last

    def health(self, peer: int, now: float) -> Health:
        value = self.phi(peer, now)
        if value is None:
            return Health.FAILED
        silence = self.last_seen(peer, now)
        assert silence is not None
        if value >= self.config.failed_phi or silence >= self.config.max_silence:
            return Health.FAILED
        if value >= self.config.suspect_phi:
            return Health.INACTIVE
        return Health.ACTIVE
