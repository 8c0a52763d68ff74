"""Import a LeRobot v3 dataset directory into our episode store, one atomic episode at a time.

Key mapping (LeRobot -> ours):

- ``observation.state`` -> ``observation.state``; with ``state_keys`` the named
  vector features are concatenated in that order instead (e.g.
  ``observation.state,observation.environment_state``).
- every ``video``/``image`` feature -> ``observation.images.<cam>`` uint8 (H, W, 3),
  ``<cam>`` being the key after ``observation.images.`` (else after ``observation.``).
- ``action`` -> ``action`` (required); ``next.reward`` -> ``reward``;
  ``next.success`` -> ``success``; ``next.done`` -> ``done``, or, when absent,
  ``done`` True on each episode's last step; ``intervention`` -> ``intervention``.
- every other feature is left out and listed in the summary; ``drop`` leaves out
  features that would otherwise be mapped (a depth camera, say).

Episode metadata: task from the episodes table, robot from ``robot_type``, fps
from info.json, success from ``next.success`` (any step) or, if the dataset has
no success signal, ``unlabelled_success``. What our exporter adds (``kit/*``
episode columns, the ``kit`` block of info.json) restores our metadata and
feature descriptions exactly.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from robot.types import ACTION, DONE, IMAGES_PREFIX, STATE, EpisodeMeta, Feature, image_key
from workflow.convert.lerobot_layout import INDEX_FEATURES, KIT_COLUMN, KIT_INFO, NUMERIC, SIGNALS, VISUAL, image_shape, read_episodes, read_info, read_tasks
from workflow.convert.mapping import IMPORTED_FROM, ConvertError, KeyMapping, as_float_frames, check_rgb_frames, last_step_done

BOOL_SIGNALS = ("done", "success", "intervention")  # our keys stored as bool


class LeRobotSource:
    """A LeRobot v3 dataset read episode by episode (an ``EpisodeSource``)."""

    format = "lerobot"

    def __init__(
        self, root: Path, *, state_keys: Sequence[str] = (), drop: Sequence[str] = (), task: str | None = None,
        robot: str | None = None, fps: float | None = None, source: str = "demo", unlabelled_success: bool = True,
    ):  # fmt: skip
        self.path = Path(root)
        self.info = read_info(self.path)
        feats: dict[str, dict[str, Any]] = self.info["features"]
        unknown = [k for k in drop if k not in feats]
        if unknown:
            raise ConvertError(f"--drop {unknown[0]}: no such feature in {self.path}; it has {', '.join(feats)}")
        self._feats = {k: f for k, f in feats.items() if k not in drop}
        self._task, self._robot, self._source, self._unlabelled = task, robot, source, unlabelled_success
        self.fps = float(fps) if fps else float(self.info["fps"])
        self._tasks = read_tasks(self.path)
        self._cameras = {k: _camera_name(k) for k, f in self._feats.items() if f["dtype"] in VISUAL}
        self._episodes = read_episodes(self.path, [k for k in self._cameras if self._feats[k]["dtype"] == "video"])
        self._state_keys = self._choose_state_keys(state_keys)
        self._signals = {ours: theirs for ours, theirs in SIGNALS.items() if theirs in self._feats}
        self._check_mappable([*self._state_keys, ACTION, *self._signals.values()])
        self._features, self.mappings = self._plan(drop)
        self._table: tuple[Path, Any] | None = None  # the data file read last
        self._videos: dict[str, Any] = {}  # camera key -> VideoFileReader of the file read last

    # ------------------------------------------------------------------ EpisodeSource
    @property
    def features(self) -> dict[str, Feature]:
        return self._features

    def __len__(self) -> int:
        return len(self._episodes)

    def source_id(self, index: int) -> str:
        return f"episode {self._episodes[index]['episode_index']}"

    def read(self, index: int) -> tuple[dict[str, np.ndarray], EpisodeMeta]:
        ep = self._episodes[index]
        where = f"{self.path} episode {ep['episode_index']}"
        rows = self._rows(ep)
        n = int(ep["length"])
        frames: dict[str, np.ndarray] = {}
        if self._state_keys:
            frames[STATE] = np.concatenate([as_float_frames(_column(rows, k, where), where=f"{where} {k}", length=n) for k in self._state_keys], axis=1)
        frames[ACTION] = as_float_frames(_column(rows, ACTION, where), where=f"{where} action", length=n)
        for ours, theirs in self._signals.items():
            values = _column(rows, theirs, where).reshape(n, -1)[:, 0] if n else np.zeros(0)
            frames[ours] = values.astype(bool) if ours in BOOL_SIGNALS else as_float_frames(values, where=f"{where} {theirs}", length=n)[:, 0]
        if DONE not in frames:
            frames[DONE] = last_step_done(n)
        for key, cam in self._cameras.items():
            images = self._video_frames(key, ep, rows, where) if self._feats[key]["dtype"] == "video" else _png_frames(rows, key, self.path, where)
            frames[image_key(cam)] = check_rgb_frames(images, where=f"{where} {key}", length=n)
        return frames, self._meta(ep, frames, rows)

    def close(self) -> None:
        for reader in self._videos.values():
            reader.close()
        self._videos.clear()

    # ------------------------------------------------------------------ planning
    def _choose_state_keys(self, requested: Sequence[str]) -> list[str]:
        if requested:
            for key in requested:
                feat = self._feats.get(key)
                if feat is None:
                    vectors = [k for k, f in self._feats.items() if f["dtype"] in NUMERIC and k not in INDEX_FEATURES]
                    raise ConvertError(f"--state-keys {key}: no such feature in {self.path}; numeric features: {', '.join(vectors)}")
                if feat["dtype"] not in NUMERIC or len(feat["shape"]) != 1:
                    raise ConvertError(f"--state-keys {key}: it is {feat['dtype']} {feat['shape']}; state is assembled from numeric vectors only")
            return list(requested)
        return [STATE] if STATE in self._feats else []

    def _check_mappable(self, keys: list[str]) -> None:
        if ACTION not in self._feats:
            raise ConvertError(
                f"{self.path}: no 'action' feature (features: {', '.join(self._feats)}); a policy learns from actions, so "
                "this dataset cannot be imported; record it with actions"
            )
        for key in keys:
            feat = self._feats[key]
            if feat["dtype"] not in NUMERIC or len(feat["shape"]) != 1:
                raise ConvertError(f"{self.path}: feature {key} is {feat['dtype']} {feat['shape']}; it maps to a numeric vector; leave it out with --drop {key}")
        for key in self._cameras:
            h, w, c = image_shape(key, self._feats[key])
            if c != 3 or self._feats[key].get("info", {}).get("video.is_depth_map"):
                raise ConvertError(f"{self.path}: camera {key} has {c} channel(s) (depth or grey); the store keeps RGB images; leave it out with --drop {key}")

    def _plan(self, drop: Sequence[str]) -> tuple[dict[str, Feature], list[KeyMapping]]:
        features: dict[str, Feature] = {}
        mappings: list[KeyMapping] = []
        if self._state_keys:
            names = [n for k in self._state_keys for n in _names(k, self._feats[k])]
            features[STATE] = Feature((len(names),), "float32", names=tuple(names))
            mappings.append(KeyMapping(" + ".join(self._state_keys), STATE, f"{len(names)} values"))
        for key, cam in self._cameras.items():
            h, w, _ = image_shape(key, self._feats[key])
            features[image_key(cam)] = Feature((h, w, 3), "uint8")
            mappings.append(KeyMapping(key, image_key(cam), f"{self._feats[key]['dtype']} {h}x{w}"))
        features[ACTION] = Feature((int(self._feats[ACTION]["shape"][0]),), "float32", names=_names(ACTION, self._feats[ACTION]))
        mappings.append(KeyMapping(ACTION, ACTION))
        for ours, theirs in self._signals.items():
            features[ours] = Feature((), "bool" if ours in BOOL_SIGNALS else "float32")
            mappings.append(KeyMapping(theirs, ours))
        if DONE not in self._signals:
            features[DONE] = Feature((), "bool")
            mappings.append(KeyMapping("(episode ends)", DONE, "True on each episode's last step"))
        used = {*self._state_keys, *self._cameras, ACTION, *self._signals.values(), *INDEX_FEATURES}
        for key in self.info["features"]:
            if key in drop:
                mappings.append(KeyMapping(key, "-", "dropped (--drop)"))
            elif key not in used:
                mappings.append(KeyMapping(key, "-", "left out (name it in --state-keys to use it)"))
        if not self._state_keys and not self._cameras:
            raise ConvertError(f"{self.path}: no observation to import (no observation.state, no camera); name vector features with --state-keys")
        ours = self.info.get(KIT_INFO, {}).get("features", {})  # our exporter's own descriptions (names, bounds)
        for key, feat in features.items():
            if key in ours and (kit := Feature.from_dict(ours[key])).shape == feat.shape and kit.dtype == feat.dtype:
                features[key] = kit
        return features, mappings

    # ------------------------------------------------------------------ reading
    def _rows(self, ep: dict[str, Any]) -> Any:
        """The episode's rows of its data file, ordered by frame_index, checked complete."""
        import pyarrow.compute as pc

        path = self.path / self.info["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
        if self._table is None or self._table[0] != path:
            self._table = (path, _read_data_file(path))
        table = self._table[1]
        start, stop, idx = int(ep["dataset_from_index"]), int(ep["dataset_to_index"]), int(ep["episode_index"])
        first = table.column("index")[0].as_py() if table.num_rows else 0
        rows = table.slice(start - first, stop - start)
        if rows.num_rows != stop - start or not pc.all(pc.equal(rows.column("episode_index"), idx)).as_py():
            rows = table.filter(pc.equal(table.column("episode_index"), idx))
        rows = rows.sort_by("frame_index")
        steps = rows.column("frame_index").to_numpy()
        if len(steps) != int(ep["length"]) or not np.array_equal(steps, np.arange(len(steps))):
            raise ConvertError(
                f"{path}: episode {idx} has {len(steps)} rows with frame_index {steps[:5].tolist()}..., but meta/episodes says "
                f"length {ep['length']}; the data file is truncated or damaged; re-download the dataset"
            )
        return rows

    def _video_frames(self, key: str, ep: dict[str, Any], rows: Any, where: str) -> np.ndarray:
        from workflow.convert.video import VideoFileReader

        rel = self.info["video_path"].format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"], file_index=ep[f"videos/{key}/file_index"])
        path = self.path / rel
        if key not in self._videos or self._videos[key].path != path:
            if key in self._videos:
                self._videos[key].close()
            self._videos[key] = VideoFileReader(path)
        fps = float(self._feats[key].get("info", {}).get("video.fps") or self.info["fps"])
        times = float(ep[f"videos/{key}/from_timestamp"]) + rows.column("timestamp").to_numpy().astype(np.float64)
        return self._videos[key].frames_at(times, tolerance=0.4 / fps)

    def _meta(self, ep: dict[str, Any], frames: dict[str, np.ndarray], rows: Any) -> EpisodeMeta:
        kit = {k[len(KIT_COLUMN):]: v for k, v in ep.items() if k.startswith(KIT_COLUMN)}
        tasks = list(ep.get("tasks") or []) or [self._tasks.get(int(rows.column("task_index")[0].as_py()), "")]
        extra = json.loads(kit["extra"]) if kit.get("extra") else {}
        extra[IMPORTED_FROM] = {"format": self.format, "path": str(self.path), "episode": f"episode {ep['episode_index']}"}
        if kit.get("success") is not None:
            success = bool(kit["success"])
        elif "success" in frames:
            success = bool(np.any(frames["success"]))
        else:
            success = self._unlabelled
            extra["success_label"] = "unlabelled in the source; set by --unlabelled-success/--unlabelled-failure"
        return EpisodeMeta(
            task=self._task or " | ".join(tasks),
            robot=self._robot or kit.get("robot") or self.info.get("robot_type") or "unknown",
            fps=self.fps,
            success=success,
            source=kit.get("source") or self._source,
            operator=kit.get("operator") or "",
            seed=kit.get("seed"),
            device=kit.get("device") or "",
            extra=extra,
        )


# ------------------------------------------------------------------------------ helpers


def _camera_name(key: str) -> str:
    if key.startswith(IMAGES_PREFIX):
        return key[len(IMAGES_PREFIX):]
    return key.removeprefix("observation.").replace(".", "_")


def _names(key: str, feat: dict[str, Any]) -> tuple[str, ...]:
    size = int(feat["shape"][0])
    names = feat.get("names")
    if isinstance(names, dict):  # older datasets: {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and len(names) == size:
        return tuple(str(n) for n in names)
    return tuple(f"{key}.{i}" for i in range(size))


def _read_data_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise ConvertError(f"{path}: data file missing; the dataset is incomplete; re-download it")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... on damaged files
        raise ConvertError(f"{path}: not a readable parquet file ({e}); the file is damaged or truncated; re-download it") from None
    missing = [c for c in INDEX_FEATURES if c not in table.column_names]
    if missing:
        raise ConvertError(f"{path}: no column {missing[0]!r}; every v3 data file has {', '.join(INDEX_FEATURES)}; the dataset is damaged")
    return table


def _column(rows: Any, key: str, where: str) -> np.ndarray:
    """One column as numpy: scalars (T,), fixed or variable size lists of numbers (T, D)."""
    import pyarrow as pa

    if key not in rows.column_names:
        raise ConvertError(f"{where}: no column {key!r} in the data file although info.json lists it; the dataset is damaged; re-download it")
    col = rows.column(key).combine_chunks()
    if col.null_count:
        raise ConvertError(f"{where}: column {key!r} has {col.null_count} missing values; the store needs every step; fix the dataset or --drop {key}")
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        values = col.flatten().to_numpy(zero_copy_only=False)
        if len(col) and len(values) % len(col):
            raise ConvertError(f"{where}: column {key!r} holds lists of different lengths; the store needs one shape per key")
        return values.reshape(len(col), -1)
    return col.to_numpy(zero_copy_only=False)


def _png_frames(rows: Any, key: str, root: Path, where: str) -> np.ndarray:
    """``image`` features: a struct<bytes, path> column of encoded images (PNG by LeRobot)."""
    from PIL import Image

    if key not in rows.column_names:
        raise ConvertError(f"{where}: no column {key!r} in the data file although info.json lists it; the dataset is damaged; re-download it")
    out = []
    for i, cell in enumerate(rows.column(key).to_pylist()):
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None and isinstance(cell, dict) and cell.get("path"):
            data = (root / cell["path"]).read_bytes()
        if data is None:
            raise ConvertError(f"{where}: {key} frame {i} holds neither image bytes nor a path; the dataset is damaged")
        out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.stack(out) if out else np.zeros((0, 1, 1, 3), np.uint8)
