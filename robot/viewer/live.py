"""Live steps as they happen (record, eval, deploy): observations, actions, rewards, flags, and the policy's denoising chain with Q and V."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from robot.types import ACTION, INTERVENTION, REWARD, SUCCESS, TIMESTAMP, Feature, Features
from robot.viewer.layout import CHAIN_DIMS, JPEG_QUALITY, dim_names, entity, jpeg, draw_kind, part, rerun_sdk, series_paths, style_series

if TYPE_CHECKING:
    from rerun import RecordingStream


class LiveLogger:
    """Step-by-step logging for ``record --view``, ``eval --view`` and ``deploy --view``.

    Uses the entity layout of :func:`log_episode`. Time is ``step / fps`` with ``fps``,
    else the observation's monotonic ``timestamp`` since the first step logged.
    """

    def __init__(self, rec: RecordingStream, features: Features | None = None, *, fps: float | None = None, timeline: str = "step", jpeg_quality: int = JPEG_QUALITY):
        self.rec, self.fps, self.timeline, self.jpeg_quality = rec, fps, timeline, jpeg_quality
        self.features: dict[str, Feature] = dict(features or {})
        self._styled: set[str] = set()
        self._flags: dict[str, bool] = {}
        self._t0: float | None = None
        self._chunks = 0

    def log_step(
        self,
        step: int,
        observation: Mapping[str, Any],
        action: np.ndarray | None,
        reward: float | Mapping[str, float] | None = None,
        flags: Mapping[str, bool] | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        """One step: the observation the action was chosen from, the applied action, the reward
        (a number, or named terms that are also summed into ``reward/total``), flags
        (``success``, ``intervention``, ``done``) and extra keys (``action.commanded``, ``safety.<name>``, ...)."""
        self._set_time(step, observation.get(TIMESTAMP))
        values: dict[str, Any] = {k: v for k, v in observation.items() if k != TIMESTAMP}
        if action is not None:
            values[ACTION] = action
        if isinstance(reward, Mapping):
            values.update({f"{REWARD}.{k}": v for k, v in reward.items()})
            values[REWARD] = float(sum(reward.values()))
        elif reward is not None:
            values[REWARD] = float(reward)
        values.update({k: bool(v) for k, v in (flags or {}).items()})
        values.update(extras or {})
        for key, value in values.items():
            self._log_value(key, np.asarray(value))
        self._flag_events(flags or {})

    def log_policy_internals(self, step: int, chain: np.ndarray | None = None, *, chunk_start: bool = False, q: float | np.ndarray | None = None, v: float | np.ndarray | None = None) -> None:
        """Policy internals at ``step``: the denoising chain ``(K+1, T, Da)`` (noise x_K first,
        action x_0 last) of the executed chunk, a chunk-boundary marker, Q (one or twin) and V."""
        rr = rerun_sdk()
        self._set_time(step, None)
        if chunk_start:
            self._chunks += 1
            self.rec.log("policy/chunk_start", rr.Scalars([1.0]))
            self.rec.log("events", rr.TextLog(f"chunk {self._chunks} starts", level="DEBUG"))
            if "policy/chunk_start" not in self._styled:
                self._styled.add("policy/chunk_start")
                self.rec.log("policy/chunk_start", rr.SeriesPoints(names="chunk start", markers="Up", marker_sizes=4.0), static=True)
        if chain is not None:
            self._log_chain(np.asarray(chain, np.float64))
        for name, value in (("q", q), ("v", v)):
            if value is not None:
                flat = np.atleast_1d(np.asarray(value, np.float64)).ravel()
                for i, x in enumerate(flat):
                    path = f"policy/{name}/{name}{i + 1}" if flat.size > 1 else f"policy/{name}/{name}"
                    self._series(path, float(x))

    def log_event(self, step: int, text: str, level: str = "INFO") -> None:
        """A line in the ``events`` log at ``step`` (episode starts, operator notes, e-stops)."""
        self._set_time(step, None)
        self.rec.log("events", rerun_sdk().TextLog(text, level=level))

    # -------------------------------------------------------------- internals
    def _set_time(self, step: int, timestamp: float | None) -> None:
        self.rec.set_time(self.timeline, sequence=int(step))
        if self.fps:
            self.rec.set_time("time", duration=step / self.fps)
        elif timestamp is not None:
            self._t0 = float(timestamp) if self._t0 is None else self._t0
            self.rec.set_time("time", duration=float(timestamp) - self._t0)

    def _log_value(self, key: str, value: np.ndarray) -> None:
        rr = rerun_sdk()
        if key not in self.features:
            self.features[key] = Feature(tuple(int(s) for s in value.shape), str(value.dtype))
        kind = draw_kind(key, self.features[key])
        if kind == "image":
            self.rec.log(entity(key), rr.EncodedImage(contents=jpeg(value, self.jpeg_quality), media_type="image/jpeg"))
        elif kind == "points":
            self.rec.log(entity(key), rr.Points3D(value.reshape(-1, 3)))
        elif kind == "series":
            for path, x in zip(series_paths(key, self.features), value.reshape(-1).astype(np.float64)):
                self._series(path, float(x))

    def _series(self, path: str, x: float) -> None:
        if path not in self._styled:
            self._styled.add(path)
            style_series(self.rec, path)
        self.rec.log(path, rerun_sdk().Scalars([x]))

    def _flag_events(self, flags: Mapping[str, bool]) -> None:
        rr = rerun_sdk()
        texts = {SUCCESS: ("task succeeds", None), INTERVENTION: ("operator takes over", "operator hands back")}
        for key, (on, off) in texts.items():
            now, before = bool(flags.get(key, False)), self._flags.get(key, False)
            if now != before and (on if now else off):
                self.rec.log("events", rr.TextLog(on if now else off, level="WARN" if key == INTERVENTION and now else "INFO"))
            self._flags[key] = now

    def _log_chain(self, chain: np.ndarray) -> None:
        """Per drawn action dimension: one strip per chunk position across the K denoising steps,
        x = denoising progress (0 noise .. 4 action), y = value (up); position 0 (executed now) stands out."""
        rr = rerun_sdk()
        if chain.ndim == 2:  # (K+1, Da): a single action
            chain = chain[:, None]
        if chain.ndim != 3:
            raise ValueError(f"denoising chain must be (K+1, T, Da) or (K+1, Da), got shape {chain.shape}; pass Chain.samples[b] of one batch row")
        k1, horizon, da = chain.shape
        x = np.linspace(0.0, 4.0, k1)
        names = dim_names(ACTION, self.features) if ACTION in self.features else [str(i) for i in range(da)]
        colors = [(255, 140, 0)] + [(90, 140, 220)] * (horizon - 1)
        radii = [0.02] + [0.008] * (horizon - 1)
        for d in range(min(CHAIN_DIMS, da)):
            strips = [np.stack([x, -chain[:, t, d]], axis=1) for t in range(horizon)]
            path = f"policy/denoising/{part(names[d] if d < len(names) else d)}"
            self.rec.log(path, rr.LineStrips2D(strips[::-1], colors=colors[::-1], radii=radii[::-1]))
