"""Export our episode store to a LeRobot v3.0 dataset directory.

Key mapping (ours -> LeRobot): ``observation.images.<cam>`` -> a ``video``
feature of the same name (mp4, one file per camera shared by many episodes);
vectors (``observation.state``, ``action``, other (D,) keys) -> ``float32``
list columns of the same name; ``reward`` / ``done`` / ``success`` ->
``next.reward`` / ``next.done`` / ``next.success``; ``intervention`` stays;
other scalars keep their name with shape (1,). Keys of 2+ dimensions that are
not cameras (``observation.pointcloud``) have no LeRobot feature type: an
error unless left out with ``drop``.

Our metadata goes into the episodes table as ``kit/*`` columns (robot,
success, source, operator, seed, device, extra) beside LeRobot's own columns,
and our feature descriptions (names, bounds) into a ``kit`` block of
info.json, so importing the export gives back the same store. The directory is written
under ``DST.partial`` and renamed at the end: an interrupted export leaves no
half dataset at ``DST``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robot import __version__
from robot.report import bar_interval
from robot.store import ZarrEpisodeStore
from robot.types import Feature, features_to_dict, is_image_key
from workflow.convert.lerobot_layout import (
    CHUNKS_SIZE, CODEBASE_VERSION, DATA_PATH, EPISODES_PATH, INDEX_FEATURES, INFO_PATH, KIT_COLUMN, KIT_INFO, SIGNALS, STATS_PATH, VIDEO_PATH, write_tasks,
)  # fmt: skip
from workflow.convert.lerobot_stats import aggregate_stats, feature_stats, stats_columns, stats_to_json
from workflow.convert.mapping import ConvertError, ConvertReport, KeyMapping
from workflow.convert.video import DEFAULT_VCODEC, VideoFileWriter, codec_name

MB = 1024 * 1024


@dataclass(frozen=True)
class _Column:
    """How one of our keys is written: its LeRobot name, kind and LeRobot feature entry."""

    ours: str
    theirs: str
    kind: str  # "video" | "vector" | "scalar"
    dtype: str
    shape: tuple[int, ...]
    names: list[str] | None


def export_lerobot(
    src: Path, dst: Path, *, drop: Sequence[str] = (), fps: float | None = None, vcodec: str = DEFAULT_VCODEC, crf: int = 30,
    data_file_mb: float = 100.0, video_file_mb: float = 200.0, progress: bool = True,
) -> ConvertReport:  # fmt: skip
    """Write every episode of the store at ``src`` as a LeRobot v3.0 dataset at ``dst`` (which must not exist)."""
    started = time.perf_counter()
    dst = Path(dst)
    if dst.exists():
        raise ConvertError(f"{dst}: already exists; an export writes a new dataset; remove it or choose another destination")
    store = ZarrEpisodeStore.open(src)
    if store.num_episodes == 0:
        raise ConvertError(f"{src}: holds no episodes; nothing to export")
    rate = _dataset_fps(store, fps)
    columns, mappings = _plan(store.features, drop)
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted export left behind
    try:
        writer = _DatasetWriter(partial, columns, rate, vcodec, crf, data_file_mb, video_file_mb)
        from tqdm.auto import tqdm

        for i in tqdm(range(store.num_episodes), desc="export lerobot", unit="ep", disable=not progress, dynamic_ncols=True, mininterval=bar_interval(0.5)):
            episode = store.episode(i, keys=[c.ours for c in columns])
            writer.add_episode(episode.data, episode.meta)
        writer.finish(robot_type=Counter(m.robot for m in store.metas).most_common(1)[0][0], features=store.features)
        os.replace(partial, dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        store.close()
    return ConvertReport(
        src=Path(src), dst=dst, src_format="zarr", dst_format="lerobot", episodes=store.num_episodes, resumed=0, steps=store.num_steps,
        seconds=time.perf_counter() - started, features=store.features, mappings=mappings,
        notes=(f"videos: {codec_name(vcodec)} ({vcodec}, crf {crf}), lossy: compare images with a tolerance",) if any(c.kind == "video" for c in columns) else (),
    )  # fmt: skip


def _dataset_fps(store: ZarrEpisodeStore, fps: float | None) -> int:
    rates = sorted({m.fps for m in store.metas})
    rate = float(fps) if fps else rates[0]
    if not fps and len(rates) > 1:
        raise ConvertError(f"{store.path}: episodes recorded at {rates} fps; a LeRobot dataset has one fps; export a store of one rate or force one with --fps")
    if abs(rate - round(rate)) > 1e-6 or round(rate) < 1:
        raise ConvertError(f"{store.path}: fps {rate}; LeRobot datasets store a whole number of frames per second; pass --fps with a whole number")
    return int(round(rate))


def _plan(features: dict[str, Feature], drop: Sequence[str]) -> tuple[list[_Column], list[KeyMapping]]:
    unknown = [k for k in drop if k not in features]
    if unknown:
        raise ConvertError(f"--drop {unknown[0]}: the store has no such key; it has {', '.join(features)}")
    columns, mappings = [], []
    for key, feat in features.items():
        if key in drop:
            mappings.append(KeyMapping(key, "-", "dropped (--drop)"))
            continue
        names = list(feat.names) if feat.names else None
        if is_image_key(key):
            if feat.dtype != "uint8" or len(feat.shape) != 3 or feat.shape[2] != 3:
                raise ConvertError(f"{key} is {feat.describe()}; LeRobot video features need uint8 (H, W, 3); leave it out with --drop {key}")
            columns.append(_Column(key, key, "video", "video", tuple(feat.shape), ["height", "width", "channels"]))
            mappings.append(KeyMapping(key, key, f"video {feat.shape[0]}x{feat.shape[1]}"))
        elif np.dtype(feat.dtype).kind not in "fiub":
            raise ConvertError(f"{key} is {feat.describe()}; LeRobot features here are numbers; leave it out with --drop {key}")
        elif len(feat.shape) == 0:
            columns.append(_Column(key, SIGNALS.get(key, key), "scalar", feat.dtype, (1,), None))
            mappings.append(KeyMapping(key, SIGNALS.get(key, key), f"{feat.dtype} (1,)"))
        elif len(feat.shape) == 1:
            columns.append(_Column(key, key, "vector", feat.dtype, tuple(feat.shape), names))
            mappings.append(KeyMapping(key, key, f"{feat.dtype} ({feat.shape[0]},)"))
        else:
            raise ConvertError(f"{key} is {feat.describe()}; LeRobot has no feature type for it (only cameras and vectors); leave it out with --drop {key}")
    return columns, mappings


class _DatasetWriter:
    """Appends episodes to data parquet files and per-camera mp4 files, then writes the meta/ files."""

    def __init__(self, root: Path, columns: list[_Column], fps: int, vcodec: str, crf: int, data_file_mb: float, video_file_mb: float):
        self.root, self.columns, self.fps = root, columns, fps
        self.vcodec, self.crf = vcodec, crf
        self.data_limit, self.video_limit = data_file_mb * MB, video_file_mb * MB
        self.tasks: dict[str, int] = {}
        self.rows: list[dict[str, Any]] = []  # episodes table
        self.episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self.frames = 0
        self._data: dict[str, Any] = {"writer": None, "chunk": 0, "file": -1, "bytes": 0}
        self._videos: dict[str, dict[str, Any]] = {c.ours: {"writer": None, "chunk": 0, "file": -1} for c in columns if c.kind == "video"}
        if self._videos:
            codec_name(vcodec)  # fail before writing anything if the encoder is missing
        root.mkdir(parents=True)

    def add_episode(self, data: dict[str, np.ndarray], meta: Any) -> None:
        n = len(next(iter(data.values())))
        index = len(self.rows)
        task_index = self.tasks.setdefault(meta.task, len(self.tasks))
        table = self._table(data, n, index, task_index)
        row: dict[str, Any] = {"episode_index": index, "tasks": [meta.task], "length": n}
        row.update(self._write_data(table))
        row.update({"dataset_from_index": self.frames, "dataset_to_index": self.frames + n})
        for col in self.columns:
            if col.kind == "video":
                row.update(self._write_video(col, data[col.ours]))
        stats = {c.theirs: feature_stats(data[c.ours], image=c.kind == "video") for c in self.columns}
        stats.update({name: feature_stats(table.column(name).to_numpy(), image=False) for name in INDEX_FEATURES})
        row.update(stats_columns(stats))
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        row.update(_kit_columns(meta))
        self.rows.append(row)
        self.episode_stats.append(stats)
        self.frames += n

    def finish(self, robot_type: str, features: dict[str, Feature]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._data["writer"] is not None:
            self._data["writer"].close()
        for state in self._videos.values():
            if state["writer"] is not None:
                state["writer"].close()
        episodes = pa.Table.from_pylist(self.rows)
        if pa.types.is_null(episodes.schema.field(KIT_COLUMN + "seed").type):
            episodes = episodes.set_column(episodes.schema.get_field_index(KIT_COLUMN + "seed"), KIT_COLUMN + "seed", pa.nulls(len(self.rows), pa.int64()))
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(episodes, path)
        write_tasks(self.root, list(self.tasks))
        (self.root / STATS_PATH).write_text(json.dumps(stats_to_json(aggregate_stats(self.episode_stats)), indent=4))
        info = self._info(robot_type)
        info[KIT_INFO] = {"kit_version": __version__, "features": features_to_dict({c.ours: features[c.ours] for c in self.columns})}
        (self.root / INFO_PATH).write_text(json.dumps(info, indent=4))

    # ------------------------------------------------------------------ internals
    def _table(self, data: dict[str, np.ndarray], n: int, index: int, task_index: int) -> Any:
        import pyarrow as pa

        cols: dict[str, Any] = {}
        for col in self.columns:
            if col.kind == "vector":
                flat = pa.array(np.ascontiguousarray(data[col.ours]).reshape(-1))
                cols[col.theirs] = pa.FixedSizeListArray.from_arrays(flat, col.shape[0])
            elif col.kind == "scalar":
                cols[col.theirs] = pa.array(np.asarray(data[col.ours]))
        cols["timestamp"] = pa.array((np.arange(n) / self.fps).astype(np.float32))
        cols["frame_index"] = pa.array(np.arange(n, dtype=np.int64))
        cols["episode_index"] = pa.array(np.full(n, index, dtype=np.int64))
        cols["index"] = pa.array(np.arange(self.frames, self.frames + n, dtype=np.int64))
        cols["task_index"] = pa.array(np.full(n, task_index, dtype=np.int64))
        return pa.table(cols)

    def _write_data(self, table: Any) -> dict[str, int]:
        import pyarrow.parquet as pq

        state = self._data
        if state["writer"] is None or state["bytes"] + table.nbytes > self.data_limit:
            if state["writer"] is not None:
                state["writer"].close()
            state["chunk"], state["file"] = _next_file(state["chunk"], state["file"])
            path = self.root / DATA_PATH.format(chunk_index=state["chunk"], file_index=state["file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            state["writer"], state["bytes"] = pq.ParquetWriter(path, table.schema), 0
        state["writer"].write_table(table)
        state["bytes"] += table.nbytes
        return {"data/chunk_index": state["chunk"], "data/file_index": state["file"]}

    def _write_video(self, col: _Column, images: np.ndarray) -> dict[str, Any]:
        state = self._videos[col.ours]
        writer = state["writer"]
        if writer is None or writer.bytes >= self.video_limit:
            if writer is not None:
                writer.close()
            state["chunk"], state["file"] = _next_file(state["chunk"], state["file"])
            path = self.root / VIDEO_PATH.format(video_key=col.theirs, chunk_index=state["chunk"], file_index=state["file"])
            writer = state["writer"] = VideoFileWriter(path, fps=self.fps, height=col.shape[0], width=col.shape[1], vcodec=self.vcodec, crf=self.crf)
        start = writer.frames
        writer.append(images)
        prefix = f"videos/{col.theirs}/"
        return {prefix + "chunk_index": state["chunk"], prefix + "file_index": state["file"],
                prefix + "from_timestamp": start / self.fps, prefix + "to_timestamp": writer.frames / self.fps}  # fmt: skip

    def _info(self, robot_type: str) -> dict[str, Any]:
        features: dict[str, Any] = {}
        for col in self.columns:
            entry: dict[str, Any] = {"dtype": col.dtype, "shape": list(col.shape), "names": col.names}
            if col.kind == "video":
                entry["info"] = {
                    "video.height": col.shape[0], "video.width": col.shape[1], "video.codec": codec_name(self.vcodec),
                    "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "video.fps": self.fps, "video.channels": 3, "has_audio": False,
                }  # fmt: skip
            features[col.theirs] = entry
        features.update({name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in INDEX_FEATURES.items()})
        n = len(self.rows)
        return {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": robot_type,
            "total_episodes": n,
            "total_frames": self.frames,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": _whole(self.data_limit / MB),
            "video_files_size_in_mb": _whole(self.video_limit / MB),
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if self._videos else None,
            "features": features,
        }


def _next_file(chunk: int, file: int) -> tuple[int, int]:
    """The (chunk, file) index after ``file`` of ``chunk``; ``file=-1`` gives the first file."""
    return (chunk + 1, 0) if file + 1 >= CHUNKS_SIZE else (chunk, file + 1)


def _whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _kit_columns(meta: Any) -> dict[str, Any]:
    k = KIT_COLUMN
    return {k + "robot": meta.robot, k + "success": bool(meta.success), k + "source": meta.source, k + "operator": meta.operator,
            k + "seed": meta.seed, k + "device": meta.device, k + "extra": json.dumps(dict(meta.extra))}  # fmt: skip
