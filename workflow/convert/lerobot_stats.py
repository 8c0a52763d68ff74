"""Feature statistics in LeRobot's layout: per episode (episodes table) and for the dataset (stats.json).

Per feature: ``min, max, mean, std, count, q01, q10, q50, q90, q99``. Vectors give
one value per entry (``(D,)``); camera features give one value per channel of
the image scaled to [0, 1], shaped ``(3, 1, 1)``; ``count`` is ``[frames]``.
Dataset statistics pool the episodes exactly for min/max/mean/std/count; the
quantiles are the frame-weighted mean of the episodes' quantiles (an
approximation, as in LeRobot's own aggregation).
"""

from __future__ import annotations

import numpy as np

QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
MAX_IMAGE_FRAMES = 100  # frames per episode sampled for image statistics
MAX_IMAGE_SIDE = 150  # images are strided down to about this side for statistics


def feature_stats(values: np.ndarray, *, image: bool) -> dict[str, np.ndarray]:
    """Statistics of one feature over one episode: ``values`` is ``(T, D)``, ``(T,)`` or images ``(T, H, W, 3)``."""
    if image:
        step = max(1, len(values) // MAX_IMAGE_FRAMES)
        stride = max(1, max(values.shape[1:3]) // MAX_IMAGE_SIDE)
        pixels = values[::step, ::stride, ::stride].reshape(-1, values.shape[-1]).astype(np.float64) / 255.0  # (N, 3)
        shape: tuple[int, ...] = (values.shape[-1], 1, 1)
    else:
        pixels = np.asarray(values, dtype=np.float64).reshape(len(values), -1)  # (T, D)
        shape = pixels.shape[1:]
    out = {
        "min": pixels.min(axis=0).reshape(shape),
        "max": pixels.max(axis=0).reshape(shape),
        "mean": pixels.mean(axis=0).reshape(shape),
        "std": pixels.std(axis=0).reshape(shape),
        "count": np.array([len(values)], dtype=np.int64),
    }
    for name, q in QUANTILES.items():
        out[name] = np.quantile(pixels, q, axis=0).reshape(shape)
    return out


def aggregate_stats(episodes: list[dict[str, dict[str, np.ndarray]]]) -> dict[str, dict[str, np.ndarray]]:
    """Dataset statistics from per-episode statistics (same features in each)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for key in episodes[0] if episodes else []:
        parts = [ep[key] for ep in episodes]
        counts = np.array([float(p["count"][0]) for p in parts])
        weights = (counts / counts.sum()).reshape(-1, *([1] * parts[0]["mean"].ndim))
        means = np.stack([p["mean"] for p in parts])
        mean = (weights * means).sum(axis=0)
        var = (weights * (np.stack([p["std"] for p in parts]) ** 2 + (means - mean) ** 2)).sum(axis=0)
        out[key] = {
            "min": np.stack([p["min"] for p in parts]).min(axis=0),
            "max": np.stack([p["max"] for p in parts]).max(axis=0),
            "mean": mean,
            "std": np.sqrt(var),
            "count": np.array([int(counts.sum())], dtype=np.int64),
        }
        for name in QUANTILES:
            out[key][name] = (weights * np.stack([p[name] for p in parts])).sum(axis=0)
    return out


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {key: {name: value.tolist() for name, value in per.items()} for key, per in stats.items()}


def stats_columns(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, list]:
    """One episode's statistics as episodes-table cells: ``{"stats/<feature>/<stat>": nested list}``."""
    return {f"stats/{key}/{name}": value.tolist() for key, per in stats.items() for name, value in per.items()}
