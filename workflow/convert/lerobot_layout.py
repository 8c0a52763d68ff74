"""The LeRobot v3.0 dataset layout: paths, ``meta/info.json``, tasks and episodes tables.

Checked against the files ``LeRobotDataset.create(...)`` of lerobot 0.4.4
(``CODEBASE_VERSION = "v3.0"``) writes::

    meta/info.json                      codebase_version, fps, robot_type, features, path templates, totals
    meta/stats.json                     {feature: {min, max, mean, std, count, q01, q10, q50, q90, q99}}
    meta/tasks.parquet                  task_index column, the task string as the pandas index
    meta/episodes/chunk-000/file-000.parquet
                                        one row per episode: episode_index, tasks, length, data/chunk_index,
                                        data/file_index, dataset_from_index, dataset_to_index,
                                        videos/<key>/{chunk_index, file_index, from_timestamp, to_timestamp},
                                        stats/<feature>/<stat>, meta/episodes/{chunk_index, file_index}
    data/chunk-000/file-000.parquet     one row per frame: features (vectors as fixed_size_list), then
                                        timestamp, frame_index, episode_index, index, task_index
    videos/<key>/chunk-000/file-000.mp4 one stream per camera; episodes one after another in time

Per-step signals use LeRobot's names ``next.reward``, ``next.done``, ``next.success``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robot.types import DONE, INTERVENTION, REWARD, SUCCESS
from workflow.convert.mapping import ConvertError

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CHUNKS_SIZE = 1000  # files per chunk directory
INDEX_FEATURES = {  # added to every dataset's features by LeRobot
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
SIGNALS = {REWARD: "next.reward", DONE: "next.done", SUCCESS: "next.success", INTERVENTION: "intervention"}  # ours -> LeRobot
KIT_COLUMN = "kit/"  # episodes-table columns holding our EpisodeMeta fields, so an export imports back unchanged
KIT_INFO = "kit"  # info.json block with our feature descriptions (names, bounds) and the kit version
VISUAL = ("video", "image")
NUMERIC = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"}
REQUIRED_EPISODE_COLUMNS = ("episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index", "dataset_to_index")


def read_info(root: Path) -> dict[str, Any]:
    """``meta/info.json``, checked for what an import needs; every problem names the field and the fix."""
    path = root / INFO_PATH
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConvertError(f"{root}: no {INFO_PATH}; not a LeRobot dataset (pass --from to name the format)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e}); the file is damaged; re-download the dataset") from None
    if not isinstance(info, dict):
        raise ConvertError(f"{path}: holds a {type(info).__name__}, expected a JSON object; the file is damaged; re-download the dataset")
    version = str(info.get("codebase_version", ""))
    if not version.startswith("v3."):
        raise ConvertError(
            f"{path}: codebase_version {version or 'missing'!r}; this importer reads LeRobot v3.x datasets; convert older ones "
            "with `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=...` first"
        )
    for name, kind in (("fps", (int, float)), ("features", dict), ("data_path", str)):
        if not isinstance(info.get(name), kind):
            raise ConvertError(f"{path}: field {name!r} is {info.get(name)!r}; a v3 info.json needs it; the file is damaged or not from LeRobot")
    if not info["fps"] > 0:
        raise ConvertError(f"{path}: fps {info['fps']!r} must be positive; fix meta/info.json")
    for key, feat in info["features"].items():
        if not isinstance(feat, dict) or "dtype" not in feat or not isinstance(feat.get("shape"), list):
            raise ConvertError(f"{path}: feature {key!r} is {feat!r}; each feature needs a dtype and a shape list; fix meta/info.json")
    if any(f["dtype"] == "video" for f in info["features"].values()) and not isinstance(info.get("video_path"), str):
        raise ConvertError(f"{path}: video features but video_path is {info.get('video_path')!r}; fix meta/info.json")
    return info


def image_shape(key: str, feature: dict[str, Any]) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image/video feature; info.json gives (H, W, C) or, in older datasets, (C, H, W)."""
    shape = [int(s) for s in feature["shape"]]
    names = [str(n).lower() for n in (feature.get("names") or [])]
    if len(shape) != 3:
        raise ConvertError(f"{INFO_PATH}: {key} has shape {shape}; camera features need 3 dims (height, width, channels)")
    if names[:1] in (["channels"], ["channel"]) or (not names and shape[0] in (1, 3) and shape[2] not in (1, 3)):
        shape = [shape[1], shape[2], shape[0]]
    return shape[0], shape[1], shape[2]


def read_tasks(root: Path) -> dict[int, str]:
    """task_index -> task string. LeRobot writes the string as the pandas index (``__index_level_0__``)."""
    import pyarrow.parquet as pq

    path = root / TASKS_PATH
    if not path.is_file():
        raise ConvertError(f"{path}: missing; every v3 dataset has it; re-download the dataset")
    table = pq.read_table(path)
    names = table.column_names
    pandas_meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    index_cols = [c for c in pandas_meta.get("index_columns", []) if isinstance(c, str)]
    text_col = next((c for c in ("task", *index_cols) if c in names), None)
    if "task_index" not in names or text_col is None:
        raise ConvertError(f"{path}: columns {names}; expected task_index and the task text (column 'task' or the pandas index); re-download the dataset")
    return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column(text_col).to_pylist())}


def write_tasks(root: Path, tasks: list[str]) -> None:
    """tasks.parquet as LeRobot writes it: task_index column, task strings as the (unnamed) pandas index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pandas_meta = {
        "index_columns": ["__index_level_0__"],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64", "metadata": None},
            {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode", "numpy_type": "object", "metadata": None},
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
    }
    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "__index_level_0__": pa.array(tasks, pa.string())})
    table = table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})
    (root / TASKS_PATH).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / TASKS_PATH)


def read_episodes(root: Path, video_keys: list[str]) -> list[dict[str, Any]]:
    """The episodes table without its stats columns, sorted by episode_index and checked for gaps."""
    import pyarrow.parquet as pq

    files = sorted((root / EPISODES_DIR).glob("*/*.parquet"))
    if not files:
        raise ConvertError(f"{root / EPISODES_DIR}: no episodes parquet files; the dataset is incomplete; re-download it")
    rows: list[dict[str, Any]] = []
    for path in files:
        schema = pq.read_schema(path)
        needed = [*REQUIRED_EPISODE_COLUMNS, *(f"videos/{k}/{c}" for k in video_keys for c in ("chunk_index", "file_index", "from_timestamp"))]
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise ConvertError(f"{path}: no column {missing[0]!r}; a v3 episodes table has it; the dataset is damaged or older than v3.0")
        keep = [c for c in schema.names if not c.startswith("stats/")]
        rows += pq.read_table(path, columns=keep).to_pylist()
    rows.sort(key=lambda r: r["episode_index"])
    indices = [r["episode_index"] for r in rows]
    if indices != list(range(len(rows))):
        raise ConvertError(f"{root / EPISODES_DIR}: episode indices {indices[:10]}... are not 0..{len(rows) - 1}; the dataset is incomplete; re-download it")
    return rows
