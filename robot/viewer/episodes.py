"""Stored episodes to a recording: every step's frames and series, flag events, and the episode's metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping

import numpy as np

from robot.protocols import Episode
from robot.types import INTERVENTION, REWARD, SUCCESS, EpisodeMeta, Features
from robot.viewer.layout import JPEG_QUALITY, entity, features_of, jpeg, draw_kind, rerun_sdk, series_paths, style_series

if TYPE_CHECKING:
    from rerun import RecordingStream


def log_episode(
    rec: RecordingStream,
    episode: Episode,
    features: Features | None = None,
    *,
    timeline: str = "step",
    fps: float | None = None,
    jpeg_quality: int = JPEG_QUALITY,
) -> None:
    """Log one stored episode (``robot.protocols.Episode``) column by column.

    ``features`` (the store's) name the vector dimensions; without them entries are
    numbered. ``fps`` defaults to the episode's metadata; time is ``step / fps``.
    """
    rr = rerun_sdk()
    data, meta = episode.data, episode.meta
    features = {**features_of(data), **(features or {})}
    fps = float(fps or meta.fps)
    n = len(episode)
    steps = np.arange(n)
    index = [rr.TimeColumn(timeline, sequence=steps), rr.TimeColumn("time", duration=steps / fps)]
    skipped = []
    for key, values in data.items():
        kind, values = draw_kind(key, features[key]), np.asarray(values)
        if kind == "image":
            blobs = [jpeg(frame, jpeg_quality) for frame in values]
            rec.send_columns(entity(key), indexes=index, columns=rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * n))
        elif kind == "points":
            points = values.reshape(n, -1, 3)
            columns = rr.Points3D.columns(positions=points.reshape(-1, 3)).partition([points.shape[1]] * n)
            rec.send_columns(entity(key), indexes=index, columns=columns)
        elif kind == "series":
            flat = values.reshape(n, -1).astype(np.float64)
            for j, path in enumerate(series_paths(key, features)):
                style_series(rec, path)
                rec.send_columns(path, indexes=index, columns=rr.Scalars.columns(scalars=flat[:, j]))
        else:
            skipped.append(f"{key} {values.shape[1:]}")
    _log_events(rec, data, meta, timeline, fps)
    rec.log("episode", rr.TextDocument(episode_markdown(episode, skipped), media_type=rr.MediaType.MARKDOWN), static=True)


def _log_events(rec: RecordingStream, data: Mapping[str, np.ndarray], meta: EpisodeMeta, timeline: str, fps: float) -> None:
    """Text-log markers: first success, each takeover and hand-back, the end, safety clamps."""
    rr = rerun_sdk()
    n = len(next(iter(data.values())))
    events: list[tuple[int, str, str]] = []
    if SUCCESS in data and np.any(data[SUCCESS]):
        events.append((int(np.argmax(data[SUCCESS])), "task succeeds", "INFO"))
    if INTERVENTION in data:
        edges = np.diff(np.concatenate([[0], np.asarray(data[INTERVENTION], int), [0]]))
        events += [(int(s), "operator takes over", "WARN") for s in np.flatnonzero(edges == 1)]
        events += [(int(s), "operator hands back", "INFO") for s in np.flatnonzero(edges[:-1] == -1)]
    end = meta.extra.get("end")
    how = f" ({end})" if end and end not in ("success", "failure") else ""
    events.append((n - 1, f"episode ends: {'success' if meta.success else 'failure'}{how}", "INFO"))
    clamps = {k: v for k, v in dict(meta.extra.get("safety") or {}).items() if v}
    if clamps:
        events.append((n - 1, "safety interventions this episode: " + ", ".join(f"{k} {v}" for k, v in clamps.items()), "WARN"))
    for step, text, level in sorted(events, key=lambda e: e[0]):
        rec.set_time(timeline, sequence=step)
        rec.set_time("time", duration=step / fps)
        rec.log("events", rr.TextLog(text, level=level))
    rec.reset_time()


def episode_markdown(episode: Episode, skipped: Iterable[str] = ()) -> str:
    """The episode's metadata as a markdown document (what the ``episode`` panel shows)."""
    import json

    meta, data = episode.meta, episode.data
    n = len(episode)
    ret = float(np.sum(data[REWARD])) if REWARD in data else None
    rows = [
        ("task", meta.task), ("robot", meta.robot), ("source", meta.source), ("success", meta.success),
        ("steps", f"{n} ({n / meta.fps:.1f} s at {meta.fps:g} Hz)"), ("return", None if ret is None else f"{ret:.3f}"),
        ("seed", meta.seed), ("device", meta.device or None), ("operator", meta.operator or None),
    ]  # fmt: skip
    lines = [f"# episode {episode.index}: {meta.task}, {'success' if meta.success else 'failure'}", "", "| field | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
    extra = {k: v for k, v in meta.extra.items() if k != "safety"}
    safety = dict(meta.extra.get("safety") or {})
    if safety:
        lines += ["", "## safety interventions", "", "| check | count |", "|---|---|", *[f"| {k} | {v} |" for k, v in safety.items()]]
    if extra:
        lines += ["", "## extra", "", "```json", json.dumps(extra, indent=2, default=str), "```"]
    skipped = list(skipped)
    if skipped:
        lines += ["", "## not shown", "", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"
