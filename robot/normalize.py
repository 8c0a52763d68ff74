"""Per-key normalisation fitted on a store and saved inside every checkpoint.

Modes:
- ``limits``: affine map of the data's [min, max] to [-1, 1] (actions, proprio);
- ``gaussian``: zero mean, unit variance;
- ``image``: uint8 [0, 255] to float [0, 1] (no statistics);
- ``identity``: left alone (point clouds in metres, flags).

A dimension whose range (or std) is below ``eps`` is only centred, so constant
inputs (a gripper that never moved) do not blow up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

MODES = ("limits", "gaussian", "image", "identity")


@dataclass(frozen=True)
class KeyStats:
    """``normalised = (x - offset) * scale``."""

    mode: str
    offset: np.ndarray
    scale: np.ndarray


class Normalizer:
    def __init__(self, stats: Mapping[str, KeyStats] | None = None):
        self.stats: dict[str, KeyStats] = dict(stats or {})

    @staticmethod
    def fit(data: Mapping[str, np.ndarray], modes: Mapping[str, str], eps: float = 1e-4) -> "Normalizer":
        """Fit from arrays ``{key: (T, ...)}``; statistics are per feature dimension (axis 0 reduced)."""
        stats = {}
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalisation mode for {key} must be one of {MODES}, got {mode!r}")
            if key not in data:
                raise KeyError(f"cannot fit normaliser: no data for {key}")
            x = np.asarray(data[key], dtype=np.float64)
            if mode == "limits":
                lo, hi = x.min(axis=0), x.max(axis=0)
                span = hi - lo
                scale = np.where(span > eps, 2.0 / np.maximum(span, eps), 1.0)
                offset = np.where(span > eps, (hi + lo) / 2.0, lo)
            elif mode == "gaussian":
                mean, std = x.mean(axis=0), x.std(axis=0)
                scale, offset = np.where(std > eps, 1.0 / np.maximum(std, eps), 1.0), mean
            elif mode == "image":
                offset, scale = np.zeros(1), np.full(1, 1.0 / 255.0)
            else:
                offset, scale = np.zeros(1), np.ones(1)
            stats[key] = KeyStats(mode, offset.astype(np.float32), scale.astype(np.float32))
        return Normalizer(stats)

    def normalize(self, key: str, x):
        """Works on numpy arrays and torch tensors whose trailing dims match the statistics."""
        s = self._get(key)
        return (x - _like(s.offset, x)) * _like(s.scale, x)

    def unnormalize(self, key: str, x):
        s = self._get(key)
        return x / _like(s.scale, x) + _like(s.offset, x)

    def normalize_batch(self, batch: Mapping[str, object]) -> dict[str, object]:
        """Normalise every key that has statistics; pass the rest through."""
        return {k: (self.normalize(k, v) if k in self.stats else v) for k, v in batch.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.stats

    def _get(self, key: str) -> KeyStats:
        if key not in self.stats:
            raise KeyError(f"normaliser has no statistics for {key} (it has {', '.join(self.stats) or 'none'})")
        return self.stats[key]

    # ------------------------------------------------------------- persistence
    def to_tensors(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Flat arrays for safetensors (``<key>.offset``, ``<key>.scale``) and the modes for JSON."""
        arrays = {}
        for key, s in self.stats.items():
            arrays[f"{key}.offset"] = s.offset
            arrays[f"{key}.scale"] = s.scale
        return arrays, {k: s.mode for k, s in self.stats.items()}

    @staticmethod
    def from_tensors(arrays: Mapping[str, np.ndarray], modes: Mapping[str, str]) -> "Normalizer":
        stats = {}
        for key, mode in modes.items():
            try:
                offset, scale = arrays[f"{key}.offset"], arrays[f"{key}.scale"]
            except KeyError:
                raise KeyError(f"normaliser statistics for {key} are missing from the checkpoint") from None
            if mode not in MODES:
                raise ValueError(f"normaliser mode for {key} is {mode!r}; this kit knows {', '.join(MODES)}")
            offset, scale = np.asarray(offset, np.float32), np.asarray(scale, np.float32)
            if offset.shape != scale.shape:
                raise ValueError(f"normaliser statistics for {key} disagree: offset {offset.shape}, scale {scale.shape}")
            if not (np.all(np.isfinite(offset)) and np.all(np.isfinite(scale))) or np.any(scale == 0):
                raise ValueError(f"normaliser statistics for {key} hold NaN, inf or a zero scale")
            stats[key] = KeyStats(mode, offset, scale)
        return Normalizer(stats)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Refuse statistics that do not broadcast onto their feature's shape (``{key: shape}``; keys not given are skipped)."""
        for key, s in self.stats.items():
            if key in shapes:
                try:
                    fits = np.broadcast_shapes(s.offset.shape, tuple(shapes[key])) == tuple(shapes[key])
                except ValueError:
                    fits = False
                if not fits:
                    raise ValueError(f"normaliser statistics for {key} have shape {s.offset.shape}, the feature is {tuple(shapes[key])}")


def _like(stat: np.ndarray, x):
    """The statistic as the same kind of array as ``x`` (numpy or torch, same device and dtype)."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return stat
    import torch

    return torch.as_tensor(stat, dtype=x.dtype if x.is_floating_point() else torch.float32, device=x.device)
