"""Exponential moving average of a model's weights, with diffusion_policy's decay warmup.

The decay after ``n`` counted updates is ``1 - (1 + n / inv_gamma) ** -power`` clipped
to ``[min_decay, max_decay]``: 0 at the first update (the average starts as a copy),
about 0.99 after 500 updates and 0.999 after 10k with ``power = 0.75``, so early
random weights are forgotten quickly and late weights are averaged over a long window.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class EmaConfig:
    """Decay schedule of :class:`EmaModel`."""

    power: float = 0.75
    """Warmup exponent (2/3 suits runs of millions of steps, 3/4 shorter ones)."""
    inv_gamma: float = 1.0
    """Warmup time scale in updates."""
    min_decay: float = 0.0
    """Lower clip of the decay."""
    max_decay: float = 0.9999
    """Upper clip of the decay."""
    update_after_step: int = 0
    """Updates before averaging starts; until then the average copies the model."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_decay <= self.max_decay < 1.0:
            raise ValueError(f"need 0 <= min_decay <= max_decay < 1, got {self.min_decay}, {self.max_decay}")
        if self.power <= 0 or self.inv_gamma <= 0 or self.update_after_step < 0:
            raise ValueError(f"power and inv_gamma must be positive, update_after_step >= 0, got {self}")


class EmaModel:
    """Holds ``averaged``, a frozen copy of a model whose weights track the model's EMA.

    Call :meth:`update` after every optimiser step; evaluate and checkpoint ``averaged``.
    Buffers (not averaged) are copied from the model.
    """

    def __init__(self, model: nn.Module, config: EmaConfig = EmaConfig()) -> None:
        self.config = config
        self.averaged = copy.deepcopy(model).eval().requires_grad_(False)
        self.num_updates = 0

    def decay(self, num_updates: int) -> float:
        """Decay used by the update that follows ``num_updates`` earlier updates."""
        cfg = self.config
        n = num_updates - cfg.update_after_step
        if n <= 0:
            return 0.0
        value = 1.0 - (1.0 + n / cfg.inv_gamma) ** -cfg.power
        return min(max(value, cfg.min_decay), cfg.max_decay)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Move the average toward ``model``; returns the decay used."""
        decay = self.decay(self.num_updates)
        for avg, new in zip(self.averaged.parameters(), model.parameters(), strict=True):
            avg.lerp_(new.detach().to(avg.dtype), 1.0 - decay)
        for avg, new in zip(self.averaged.buffers(), model.buffers(), strict=True):
            avg.copy_(new)
        self.num_updates += 1
        return decay
