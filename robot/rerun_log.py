"""Rerun logging: stored episodes, live steps with policy internals, and training curves.

Stored episodes (:func:`log_episode`) and live steps (:class:`LiveLogger`) use one
entity layout, so one blueprint (:func:`episode_blueprint`) fits both::

    observation/images/<cam>      JPEG frames
    observation/pointcloud        3-D points
    observation/state/<name>      one scalar series per named dimension (any vector key alike)
    action/<name>/applied         the action the safety layer applied (key ``action``)
    action/<name>/commanded       the action asked for (key ``action.commanded``, when stored)
    reward/total, reward/<term>   keys ``reward`` and ``reward.<term>``
    flags/success|intervention|done
    safety/<name>                 per-step keys ``safety.<name>``
    events                        text log: success, takeover, hand-back, end, safety clamps
    episode                       metadata document (static)
    policy/denoising/<name>       denoising chain of the first action dimensions (line strips)
    policy/chunk_start, policy/q, policy/v

Timelines: ``step`` (sequence) and ``time`` (seconds); curves use ``train_step``.
Rerun is imported inside functions, so importing this module costs nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from robot.metrics import AXES, display_name
from robot.protocols import Episode
from robot.types import ACTION, DONE, IMAGES_PREFIX, INTERVENTION, POINTCLOUD, REWARD, SUCCESS, TIMESTAMP, EpisodeMeta, Feature, Features, is_image_key

COMMANDED = "action.commanded"
FLAGS = (SUCCESS, INTERVENTION, DONE)
CHAIN_DIMS = 2  # action dimensions whose denoising chain is drawn
JPEG_QUALITY = 85
COMMANDED_COLOR = (150, 150, 150)
_server: dict[str, Any] = {}  # headless live view: {"recording": the one hosting this process's gRPC server (kept alive), "url": ...}

if TYPE_CHECKING:
    from rerun import RecordingStream
    from rerun.blueprint import Blueprint


def _rr():
    import rerun as rr

    return rr


# ------------------------------------------------------------------ key -> entity paths


def _part(name: str) -> str:
    return _rr().escape_entity_path_part(str(name))


def _entity(key: str) -> str:
    """``observation.images.top`` -> ``observation/images/top``."""
    return "/".join(_part(p) for p in key.split("."))


def dim_names(key: str, features: Features) -> list[str]:
    """Labels of a vector key's entries: its Feature.names, the action's for ``action.*``, else 0, 1, ..."""
    feat = features.get(key)
    size = int(feat.shape[0]) if feat is not None and len(feat.shape) == 1 else 0
    for source in (feat, features.get(ACTION) if key.startswith(ACTION) else None):
        if source is not None and source.names and len(source.shape) == 1 and len(source.names) == size:
            return list(source.names)
    return [str(i) for i in range(size)]


def series_paths(key: str, features: Features) -> list[str]:
    """One entity path per scalar series of a scalar or vector key (see the module docstring)."""
    feat = features[key]
    if len(feat.shape) == 0:
        if key == REWARD:
            return ["reward/total"]
        if key in FLAGS:
            return [f"flags/{key}"]
        return [_entity(key)]
    names = [_part(n) for n in dim_names(key, features)]
    if key == ACTION:
        return [f"action/{n}/applied" for n in names]
    if key == COMMANDED:
        return [f"action/{n}/commanded" for n in names]
    return [f"{_entity(key)}/{n}" for n in names]


def _kind(key: str, feat: Feature) -> str:
    """image | points | series | skip."""
    if key == TIMESTAMP:
        return "skip"
    if is_image_key(key) and feat.dtype == "uint8" and len(feat.shape) in (2, 3):
        return "image"
    if key == POINTCLOUD or (len(feat.shape) == 2 and feat.shape[1] == 3 and key.endswith("pointcloud")):
        return "points"
    return "series" if len(feat.shape) <= 1 else "skip"


def _jpeg(frame: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim == 3 and frame.shape[-1] == 1:
        frame = frame[..., 0]
    image = Image.fromarray(frame)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _features_of(data: Mapping[str, np.ndarray]) -> dict[str, Feature]:
    """Features read off arrays with time first (no names): for episodes logged without their store's features."""
    return {k: Feature(tuple(int(s) for s in np.shape(v)[1:]), str(np.asarray(v).dtype)) for k, v in data.items()}


# ------------------------------------------------------------------ stored episodes


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
    rr = _rr()
    data, meta = episode.data, episode.meta
    features = {**_features_of(data), **(features or {})}
    fps = float(fps or meta.fps)
    n = len(episode)
    steps = np.arange(n)
    index = [rr.TimeColumn(timeline, sequence=steps), rr.TimeColumn("time", duration=steps / fps)]
    skipped = []
    for key, values in data.items():
        kind, values = _kind(key, features[key]), np.asarray(values)
        if kind == "image":
            blobs = [_jpeg(frame, jpeg_quality) for frame in values]
            rec.send_columns(_entity(key), indexes=index, columns=rr.EncodedImage.columns(blob=blobs, media_type=["image/jpeg"] * n))
        elif kind == "points":
            points = values.reshape(n, -1, 3)
            columns = rr.Points3D.columns(positions=points.reshape(-1, 3)).partition([points.shape[1]] * n)
            rec.send_columns(_entity(key), indexes=index, columns=columns)
        elif kind == "series":
            flat = values.reshape(n, -1).astype(np.float64)
            for j, path in enumerate(series_paths(key, features)):
                _style(rec, path)
                rec.send_columns(path, indexes=index, columns=rr.Scalars.columns(scalars=flat[:, j]))
        else:
            skipped.append(f"{key} {values.shape[1:]}")
    _log_events(rec, data, meta, timeline, fps)
    rec.log("episode", rr.TextDocument(episode_markdown(episode, skipped), media_type=rr.MediaType.MARKDOWN), static=True)


def _style(rec: RecordingStream, path: str) -> None:
    """Static series style: the legend shows the last path part (the dimension name); commanded is grey."""
    rr = _rr()
    parts = path.split("/")
    if parts[-1] in ("applied", "commanded"):
        label = f"{parts[-2]} {parts[-1]}"
        colors = [COMMANDED_COLOR] if parts[-1] == "commanded" else None
        rec.log(path, rr.SeriesLines(names=label, colors=colors), static=True)
    elif parts[0] == "flags":
        rec.log(path, rr.SeriesLines(names=parts[-1], interpolation_mode="StepAfter"), static=True)
    else:
        rec.log(path, rr.SeriesLines(names=parts[-1]), static=True)


def _log_events(rec: RecordingStream, data: Mapping[str, np.ndarray], meta: EpisodeMeta, timeline: str, fps: float) -> None:
    """Text-log markers: first success, each takeover and hand-back, the end, safety clamps."""
    rr = _rr()
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


# ------------------------------------------------------------------ blueprints


def episode_blueprint(features: Features, *, policy_internals: bool = False, timeline: str = "step") -> Blueprint:
    """Cameras in a grid, the point cloud and the metadata on top; time series below.

    Series panels: one per vector observation (and any other per-step key), the actions
    (one panel per dimension with commanded vs applied when both exist), reward, flags,
    safety, and with ``policy_internals`` the denoising chain and critic estimates.
    """
    rrb = _rr().blueprint
    features = dict(features)
    cams = [rrb.Spatial2DView(origin=_entity(k), name=k[len(IMAGES_PREFIX):]) for k, f in features.items() if _kind(k, f) == "image"]
    top: list[Any] = [rrb.Grid(*cams, name="cameras")] if cams else []
    top += [rrb.Spatial3DView(origin=_entity(k), name=k) for k, f in features.items() if _kind(k, f) == "points"]
    top.append(rrb.Vertical(rrb.TextDocumentView(origin="episode", name="episode"), rrb.TextLogView(origin="events", name="events")))
    origins: dict[str, str] = {}  # series panel origin -> title, in feature order
    for key, feat in features.items():
        if _kind(key, feat) != "series":
            continue
        if key == ACTION and COMMANDED in features:
            origins.update({f"action/{_part(n)}": f"action {n}: commanded vs applied" for n in dim_names(ACTION, features)})
        elif key == ACTION:
            origins["action"] = "action (applied)"
        elif key == REWARD or key.startswith(REWARD + "."):
            origins["reward"] = "reward"
        elif key in FLAGS:
            origins["flags"] = "flags"
        elif key.startswith("safety."):
            origins["safety"] = "safety"
        elif key != COMMANDED:
            origins[_entity(key)] = key
    series: list[Any] = [rrb.TimeSeriesView(origin=origin, name=name) for origin, name in origins.items()]
    if policy_internals:
        names = dim_names(ACTION, features)[:CHAIN_DIMS] if ACTION in features else ["0"]
        series += [rrb.Spatial2DView(origin=f"policy/denoising/{_part(n)}", name=f"denoising chain: {n}") for n in names]
        series.append(rrb.TimeSeriesView(origin="policy", contents=["policy/q/**", "policy/v/**", "policy/chunk_start"], name="critics and chunks"))
    layout = rrb.Vertical(rrb.Horizontal(*top), rrb.Grid(*series, name="time series"), row_shares=[2, 3]) if series else rrb.Horizontal(*top)
    return rrb.Blueprint(layout, rrb.TimePanel(timeline=timeline), collapse_panels=False)


def metrics_blueprint(keys: Iterable[str], *, prefix: str = "train") -> Blueprint:
    """One time-series panel per metric group (``losses``, ``charts``, ``ope``, ...) on ``train_step``."""
    rrb = _rr().blueprint
    keys = list(keys)
    groups = sorted({k.split("/")[0] for k in keys if "/" in k})
    views = [rrb.TimeSeriesView(origin=f"{prefix}/{_part(g)}", name=g) for g in groups]
    if any("/" not in k for k in keys):
        views.append(rrb.TimeSeriesView(origin=prefix, contents=[f"{prefix}/{_part(k)}" for k in keys if "/" not in k], name=prefix))
    return rrb.Blueprint(rrb.Grid(*views), rrb.TimePanel(timeline="train_step"), collapse_panels=False)


# ------------------------------------------------------------------ training curves


def metric_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The numeric metrics of ``read_metrics`` rows by display name (an offline round's as ``round-M/<name>``)."""
    return sorted({display_name(row, k) for row in rows for k, v in row.items() if k not in AXES and isinstance(v, (int, float))})


def log_metrics(rec: RecordingStream, rows: Iterable[Mapping[str, Any]], *, prefix: str = "train") -> list[str]:
    """Log ``robot.metrics.read_metrics`` rows as scalar series ``<prefix>/<metric>`` on ``train_step``.

    ``losses/denoise`` becomes ``train/losses/denoise``; a row's wall-clock ``time`` also
    gives a ``wall_time`` timeline. Returns the metric names logged.
    """
    rr = _rr()
    rows = [{**{a: row[a] for a in ("step", "time") if a in row}, **{display_name(row, k): v for k, v in row.items() if k not in AXES}} for row in rows]
    keys = metric_keys(rows)
    for key in keys:
        have = [row for row in rows if isinstance(row.get(key), (int, float))]
        index = [rr.TimeColumn("train_step", sequence=[int(r["step"]) for r in have])]
        if all("time" in r for r in have):
            index.append(rr.TimeColumn("wall_time", timestamp=[float(r["time"]) for r in have]))
        path = "/".join([prefix, *(_part(p) for p in key.split("/"))])
        rec.log(path, rr.SeriesLines(names=key.split("/")[-1]), static=True)
        rec.send_columns(path, indexes=index, columns=rr.Scalars.columns(scalars=np.asarray([r[key] for r in have], np.float64)))
    return keys


# ------------------------------------------------------------------ live logging


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
        rr = _rr()
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
        self.rec.log("events", _rr().TextLog(text, level=level))

    # -------------------------------------------------------------- internals
    def _set_time(self, step: int, timestamp: float | None) -> None:
        self.rec.set_time(self.timeline, sequence=int(step))
        if self.fps:
            self.rec.set_time("time", duration=step / self.fps)
        elif timestamp is not None:
            self._t0 = float(timestamp) if self._t0 is None else self._t0
            self.rec.set_time("time", duration=float(timestamp) - self._t0)

    def _log_value(self, key: str, value: np.ndarray) -> None:
        rr = _rr()
        if key not in self.features:
            self.features[key] = Feature(tuple(int(s) for s in value.shape), str(value.dtype))
        kind = _kind(key, self.features[key])
        if kind == "image":
            self.rec.log(_entity(key), rr.EncodedImage(contents=_jpeg(value, self.jpeg_quality), media_type="image/jpeg"))
        elif kind == "points":
            self.rec.log(_entity(key), rr.Points3D(value.reshape(-1, 3)))
        elif kind == "series":
            for path, x in zip(series_paths(key, self.features), value.reshape(-1).astype(np.float64)):
                self._series(path, float(x))

    def _series(self, path: str, x: float) -> None:
        if path not in self._styled:
            self._styled.add(path)
            _style(self.rec, path)
        self.rec.log(path, _rr().Scalars([x]))

    def _flag_events(self, flags: Mapping[str, bool]) -> None:
        rr = _rr()
        texts = {SUCCESS: ("task succeeds", None), INTERVENTION: ("operator takes over", "operator hands back")}
        for key, (on, off) in texts.items():
            now, before = bool(flags.get(key, False)), self._flags.get(key, False)
            if now != before and (on if now else off):
                self.rec.log("events", rr.TextLog(on if now else off, level="WARN" if key == INTERVENTION and now else "INFO"))
            self._flags[key] = now

    def _log_chain(self, chain: np.ndarray) -> None:
        """Per drawn action dimension: one strip per chunk position across the K denoising steps,
        x = denoising progress (0 noise .. 4 action), y = value (up); position 0 (executed now) stands out."""
        rr = _rr()
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
            path = f"policy/denoising/{_part(names[d] if d < len(names) else d)}"
            self.rec.log(path, rr.LineStrips2D(strips[::-1], colors=colors[::-1], radii=radii[::-1]))


# ------------------------------------------------------------------ sinks


def has_display() -> bool:
    """Whether a native viewer window can open here."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or sys.platform in ("darwin", "win32")


def served_url() -> str | None:
    """The gRPC URL this process serves its live recordings on (headless), if any."""
    return _server.get("url")


def how_to_connect(url: str) -> str:
    port = url.rsplit(":", 1)[-1].split("/")[0]
    return (
        f"no display here: serving the Rerun stream at {url} (localhost only).\n"
        f"  watch it on this machine:  rerun --connect {url}\n"
        f"  or from your computer:     ssh -L {port}:127.0.0.1:{port} THIS_HOST, then rerun --connect {url}"
    )


def _free_port(preferred: int = 9876) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise OSError("no free TCP port for the Rerun gRPC server")


def open_recording(
    app_id: str,
    *,
    save: Path | None = None,
    spawn: bool = False,
    recording_id: str | None = None,
    name: str | None = None,
    blueprint: Blueprint | None = None,
) -> RecordingStream:
    """A ``rr.RecordingStream`` that writes ``save`` (an .rrd file, headless) and/or, with
    ``spawn``, streams to a viewer: a spawned window where there is a display, else a gRPC
    server on localhost (one per process, shared by later recordings) whose connect
    command is printed to stderr."""
    rr = _rr()
    if save is None and not spawn:
        raise ValueError(f"open_recording({app_id!r}) needs save=PATH.rrd, spawn=True, or both")
    rec = rr.RecordingStream(app_id, recording_id=recording_id)
    sinks: list[Any] = []
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        sinks.append(rr.FileSink(str(save)))
    if spawn and has_display():
        rr.spawn(connect=False)
        sinks.append(rr.GrpcSink())
    elif spawn and _server:
        sinks.append(rr.GrpcSink(_server["url"]))
    elif spawn:
        server = rr.GrpcServerSink(bind_ip="127.0.0.1", port=_free_port())
        _server.update(recording=rec, url=server.uri)
        sinks.append(server)
        print(how_to_connect(server.uri), file=sys.stderr)
    rec.set_sinks(*sinks, default_blueprint=blueprint)
    if name:
        rec.send_recording_name(name)
    return rec


def merge_rrd(parts: Iterable[Path], out: Path) -> Path:
    """Merge .rrd files into one that keeps every recording and blueprint (``rerun rrd merge``)."""
    parts = [str(p) for p in parts]
    cmd = [sys.executable, "-m", "rerun_cli", "rrd", "merge", *parts, "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"merging {len(parts)} recordings into {out} failed ({' '.join(cmd)}): {done.stderr.strip()[-500:]}")
    return out


class RecordingSet:
    """Several recordings (one per episode, one for curves) bound for one .rrd file or one viewer.

    With ``save``, each :meth:`new` recording is written to a part file and :meth:`close`
    joins the parts into ``save`` (a single part is just moved there). With ``spawn``,
    every recording streams to the same viewer (see :func:`open_recording`).
    """

    def __init__(self, *, save: Path | None = None, spawn: bool = False):
        if (save is None) == (not spawn):
            raise ValueError(f"a RecordingSet writes a file or feeds a viewer: pass save=PATH.rrd or spawn=True, not {'both' if spawn else 'neither'}")
        self.save, self.spawn = (Path(save) if save is not None else None), spawn
        self.recordings: list[RecordingStream] = []
        self._parts: list[Path] = []
        self._tmp: Path | None = None
        if self.save is not None:
            self.save.parent.mkdir(parents=True, exist_ok=True)
            self._tmp = Path(tempfile.mkdtemp(prefix=".rrd-parts-", dir=self.save.parent))

    def new(self, app_id: str, *, recording_id: str, name: str | None = None, blueprint: Blueprint | None = None) -> RecordingStream:
        part = self._tmp / f"{len(self._parts):04d}.rrd" if self._tmp is not None else None
        rec = open_recording(app_id, save=part, spawn=self.spawn, recording_id=recording_id, name=name, blueprint=blueprint)
        self.recordings.append(rec)
        if part is not None:
            self._parts.append(part)
        return rec

    def __enter__(self) -> "RecordingSet":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        elif self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def close(self) -> None:
        """Flush every recording; with ``save``, write the one .rrd file."""
        for rec in self.recordings:
            rec.flush()
        if self.save is None or self._tmp is None:
            return
        for rec in self.recordings:
            rec.disconnect()  # closes the part file and writes its footer
        try:
            if len(self._parts) == 1:
                os.replace(self._parts[0], self.save)
            elif self._parts:
                merge_rrd(self._parts, self.save)
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
