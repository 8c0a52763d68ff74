"""A fixed-rate loop: sleep to absolute deadlines and measure the rate actually held.

Deadlines advance by exactly one period, so sleep overshoot does not accumulate
and the mean rate stays the requested one. A tick that starts more than a whole
period late (the work overran) is counted and the schedule re-anchors at it
rather than bursting to catch up. ``hz = 0`` runs unthrottled and only measures.

Used by ``robot record`` and the deployment runner::

    loop = RateLoop(10.0)
    while running:
        step()
        loop.sleep()
    print(loop.stats())
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class RateStats:
    """What a :class:`RateLoop` held. Period error = measured tick-to-tick period - requested period."""

    requested_hz: float  # 0 = unthrottled
    ticks: int  # periods measured
    mean_hz: float  # ticks / time spent in them
    jitter_p50_ms: float  # median |period error| (unthrottled: distance from the mean period)
    jitter_p99_ms: float
    overruns: int  # ticks that started more than one period late

    def describe(self) -> str:
        want = "unthrottled" if self.requested_hz == 0 else f"{self.requested_hz:g} Hz requested"
        return f"{self.mean_hz:.1f} Hz held ({want}), jitter p50 {self.jitter_p50_ms:.2f} ms, p99 {self.jitter_p99_ms:.2f} ms, {self.overruns} overruns"


class RateLoop:
    """Call :meth:`sleep` once per iteration; :meth:`restart` after a pause (the gap is not measured).

    ``clock`` and ``sleeper`` default to ``time.perf_counter`` and ``time.sleep``;
    tests pass a fake clock.
    """

    def __init__(
        self,
        hz: float,
        *,
        clock: Callable[[], float] = time.perf_counter,
        sleeper: Callable[[float], None] = time.sleep,
    ):
        if not hz >= 0:
            raise ValueError(f"loop rate must be >= 0 Hz (0 = unthrottled), got {hz}")
        self.hz = float(hz)
        self.period = 1.0 / hz if hz > 0 else 0.0
        self._clock, self._sleep = clock, sleeper
        self._periods = array("d")  # measured tick-to-tick periods, seconds
        self._late = array("b")  # 1 where that tick overran
        self.restart()

    def restart(self) -> None:
        """Start a new period now: the next :meth:`sleep` ends one period from here."""
        self._tick = self._clock()
        self._deadline = self._tick + self.period

    def sleep(self) -> None:
        """Sleep until the end of the current period (unthrottled: return at once), then start the next."""
        if self.period > 0:
            remaining = self._deadline - self._clock()
            if remaining > 0:
                self._sleep(remaining)
        now = self._clock()
        late = self.period > 0 and now - self._deadline > self.period
        self._deadline = now + self.period if late else self._deadline + self.period
        self._periods.append(now - self._tick)
        self._late.append(late)
        self._tick = now

    @property
    def ticks(self) -> int:
        """Periods measured so far."""
        return len(self._periods)

    def stats(self, last: int | None = None) -> RateStats:
        """Stats over every measured period, or only the ``last`` ones (one episode, a live status line)."""
        first = 0 if last is None else max(self.ticks - last, 0)
        periods = np.array(self._periods[first:], dtype=np.float64)
        overruns = int(sum(self._late[first:]))
        if len(periods) == 0:
            return RateStats(self.hz, 0, 0.0, 0.0, 0.0, overruns)
        total = float(periods.sum())
        nominal = self.period if self.period > 0 else total / len(periods)
        error_ms = np.abs(periods - nominal) * 1e3
        return RateStats(
            requested_hz=self.hz,
            ticks=len(periods),
            mean_hz=len(periods) / total if total > 0 else float("inf"),
            jitter_p50_ms=float(np.percentile(error_ms, 50)),
            jitter_p99_ms=float(np.percentile(error_ms, 99)),
            overruns=overruns,
        )
