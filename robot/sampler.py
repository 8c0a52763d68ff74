"""Windowed sampling over episodes held in memory.

A window is ``horizon`` consecutive steps of one episode starting ``n_obs_steps - 1``
steps before the "current" step, as in diffusion_policy: observation keys keep the
first ``n_obs_steps`` frames ``(B, To, ...)``, every other key (actions, rewards)
the whole window ``(B, horizon, ...)``. Windows may hang over the episode's edges
by ``pad_before`` / ``pad_after`` steps; padded frames repeat the edge frame and
are flagged in ``"<key>_is_pad"`` so losses can ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class WindowConfig:
    n_obs_steps: int = 2
    """To: observation frames the policy is conditioned on."""
    horizon: int = 16
    """Steps per window (the action chunk the denoiser predicts)."""
    n_action_steps: int = 8
    """Ta: actions executed per chunk; windows may end up to Ta - 1 steps after the episode."""

    def __post_init__(self) -> None:
        if self.n_obs_steps < 1 or self.horizon < 1 or self.n_action_steps < 1:
            raise ValueError(f"n_obs_steps, horizon and n_action_steps must be >= 1, got {self}")
        if self.n_obs_steps + self.n_action_steps - 1 > self.horizon:
            raise ValueError(
                f"horizon {self.horizon} is too short for n_obs_steps {self.n_obs_steps} + n_action_steps "
                f"{self.n_action_steps} - 1; raise horizon or lower n_action_steps"
            )

    @property
    def pad_before(self) -> int:
        return self.n_obs_steps - 1

    @property
    def pad_after(self) -> int:
        return self.n_action_steps - 1


def split_episodes(num_episodes: int, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split episode indices into train and validation sets (whole episodes, never frames).

    With two or more episodes and ``val_fraction > 0`` at least one episode is held out
    and at least one kept for training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(num_episodes)
    n_val = int(round(num_episodes * val_fraction))
    if val_fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


class WindowSampler:
    """Random-access windows over in-memory episodes.

    ``data`` maps keys to arrays ``(T, ...)`` of concatenated episodes (as loaded by
    ``ZarrEpisodeStore.load``); ``episode_ends`` are the exclusive ends;
    ``episodes`` selects which episodes to draw windows from (a train or val split).
    """

    def __init__(
        self,
        data: Mapping[str, np.ndarray],
        episode_ends: np.ndarray,
        config: WindowConfig,
        episodes: Sequence[int] | None = None,
        obs_keys: Sequence[str] | None = None,
    ):
        self.data = dict(data)
        self.config = config
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        chosen = np.arange(len(ends)) if episodes is None else np.asarray(episodes, dtype=np.int64)
        if len(chosen) == 0:
            raise ValueError("WindowSampler needs at least one episode")
        self.obs_keys = tuple(k for k in data if k.startswith("observation.")) if obs_keys is None else tuple(obs_keys)
        # One row per window: (window start, episode start, episode end); starts may be negative offsets.
        rows = []
        for ep in chosen:
            s, e = int(starts[ep]), int(ends[ep])
            first, last = s - config.pad_before, e - config.horizon + config.pad_after
            for w in range(first, max(first, last) + 1):
                rows.append((w, s, e))
        self._rows = np.asarray(rows, dtype=np.int64)  # (N, 3)

    def __len__(self) -> int:
        return len(self._rows)

    def indices(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frame indices ``(B, horizon)`` for window rows and the padding mask ``(B, horizon)``."""
        w, s, e = self._rows[rows].T
        raw = w[:, None] + np.arange(self.config.horizon)[None, :]
        clipped = np.clip(raw, s[:, None], e[:, None] - 1)
        return clipped, clipped != raw

    def batch(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The windows at ``rows``: observation keys ``(B, To, ...)``, others ``(B, horizon, ...)``."""
        idx, is_pad = self.indices(np.asarray(rows))
        out: dict[str, np.ndarray] = {}
        for key, arr in self.data.items():
            if key in self.obs_keys:
                out[key] = arr[idx[:, : self.config.n_obs_steps]]
            else:
                out[key] = arr[idx]
                out[f"{key}_is_pad"] = is_pad
        return out

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return self.batch(rng.integers(0, len(self), size=batch_size))

    def epoch(self, batch_size: int, rng: np.random.Generator, drop_last: bool = False):
        """Yield shuffled batches covering every window once."""
        order = rng.permutation(len(self))
        stop = len(order) - (len(order) % batch_size if drop_last else 0)
        for i in range(0, stop, batch_size):
            yield self.batch(order[i : i + batch_size])
