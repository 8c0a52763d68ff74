"""Action chunks on a real clock: which action is due at each control tick.

A chunk planned from the observation of tick ``k`` holds actions for ticks
``k, k+1, ..., k+H-1`` (the policy was trained with windows anchored at the
current step). When inference takes time, the chunk arrives at a later tick
``j``; its actions for ticks before ``j`` are stale (their moment has passed)
and are dropped, the rest are executed at their own ticks. This is the
latency compensation of diffusion_policy's real-robot runner, with time
counted in control ticks so the schedule follows the loop's fixed rate.

Two ways to combine chunks:

- ``receding``: each new chunk replaces what is left of the old one and
  supplies ``n_action_steps`` ticks from the one it arrived at (planned inline
  that is its first ``n_action_steps`` actions; a plan that took ``d`` ticks
  supplies actions ``d .. d + n_action_steps - 1``, as far as the horizon goes).
- ``ensemble``: temporal ensembling (ACT): every prediction made for a tick is
  kept and the action sent is their weighted mean, weights ``exp(-decay * i)``
  with ``i = 0`` the oldest prediction; plan at every tick for it to help.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("receding", "ensemble")


@dataclass(frozen=True)
class ChunkQueueConfig:
    """How chunks become per-tick actions."""

    mode: str = "receding"
    """receding (execute n_action_steps of each chunk, then re-plan) or ensemble (temporal ensembling)."""
    n_action_steps: int = 4
    """Actions a receding-horizon chunk supplies (the policy's Ta)."""
    ensemble_decay: float = 0.01
    """Ensemble weight exp(-decay * i), i = 0 for the oldest prediction of a tick (ACT uses 0.01)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"chunk mode must be one of {MODES}, got {self.mode!r}")
        if self.n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {self.n_action_steps}")
        if not self.ensemble_decay >= 0:
            raise ValueError(f"ensemble_decay must be >= 0, got {self.ensemble_decay}")


class ChunkQueue:
    """Timestamped (tick-indexed) actions; :meth:`add` a chunk, :meth:`pop` the action due now."""

    def __init__(self, config: ChunkQueueConfig = ChunkQueueConfig()):
        self.config = config
        self._slots: dict[int, list[np.ndarray]] = {}  # tick -> predictions for it, oldest first
        self.stale_dropped = 0  # actions dropped because their tick had passed when the chunk arrived
        self.chunks_dropped = 0  # chunks that arrived with every action stale

    def clear(self) -> None:
        """Forget every queued action (new episode, operator takeover, e-stop)."""
        self._slots.clear()

    def add(self, chunk: np.ndarray, planned_at: int, now: int) -> int:
        """Queue ``chunk`` ``(H, Da)`` planned from tick ``planned_at``'s observation, arriving at tick ``now``.

        Returns how many of its actions were usable (0: the whole chunk was stale).
        """
        horizon = len(chunk)
        first = now - planned_at  # index of the action due now
        if first >= horizon:
            self.stale_dropped += horizon
            self.chunks_dropped += 1
            return 0
        self.stale_dropped += max(first, 0)
        first = max(first, 0)
        if self.config.mode == "receding":
            last = min(first + self.config.n_action_steps, horizon)
            self._slots = {t: p for t, p in self._slots.items() if t < now}
            for i in range(first, last):
                self._slots[planned_at + i] = [np.asarray(chunk[i])]
            return last - first
        for i in range(first, horizon):
            self._slots.setdefault(planned_at + i, []).append(np.asarray(chunk[i]))
        return horizon - first

    def queued(self, now: int) -> int:
        """Consecutive ticks from ``now`` that have an action queued."""
        n = 0
        while now + n in self._slots:
            n += 1
        return n

    def pop(self, now: int) -> np.ndarray | None:
        """The action for tick ``now`` (None: nothing planned for it); older ticks are discarded."""
        for t in [t for t in self._slots if t < now]:
            del self._slots[t]
        predictions = self._slots.pop(now, None)
        if not predictions:
            return None
        if len(predictions) == 1:
            return predictions[0]
        weights = np.exp(-self.config.ensemble_decay * np.arange(len(predictions)))
        return (np.tensordot(weights / weights.sum(), np.stack(predictions), axes=1)).astype(predictions[0].dtype)
