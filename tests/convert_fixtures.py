"""Datasets in other tools' own layouts, for the `robot convert` tests.

- :func:`write_lerobot_by_spec`: a LeRobot v3.0 directory written with pyarrow
  (and PyAV for videos) exactly as lerobot 0.4.4's ``LeRobotDataset`` lays it
  out (checked file by file against one it wrote), with several episodes per
  data / video file and episodes split over several files.
- :func:`write_robomimic`: a robomimic HDF5 file with robosuite-style obs keys.
- :data:`LEROBOT_SCRIPT`: run by an interpreter where the LeRobot library
  imports; it creates a dataset with ``LeRobotDataset.create`` and loads one
  we exported with ``LeRobotDataset``.

Every value encodes (episode, step), so a mix-up of episodes or steps shows.
Only numpy at module level: the LeRobot script imports this module too.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

FPS = 15
H, W = 32, 48  # camera frames (even sides: yuv420p video)
TASKS = ("push the block", "stack the cups")


def lerobot_episode(i: int) -> dict[str, np.ndarray]:
    """Episode ``i`` in LeRobot's feature names: ``(T, ...)`` per key."""
    t = 12 + 3 * i
    steps = np.arange(t, dtype=np.float32)[:, None]
    return {
        "observation.state": i * 100 + steps + np.arange(3, dtype=np.float32) / 10,
        "observation.environment_state": -(i * 100 + steps + np.arange(2, dtype=np.float32) / 10),
        "observation.velocity": np.full((t, 2), i, np.float32),
        "action": np.concatenate([np.full((t, 1), i, np.float32), steps], axis=1),
        "next.reward": (np.arange(t) >= t - 2).astype(np.float32),
        "next.success": (np.arange(t) >= t - 2) & (i % 2 == 0),
        "observation.images.front": gradient_images(i, t),
    }


def gradient_images(i: int, t: int, h: int = H, w: int = W) -> np.ndarray:
    """Smooth frames ``(t, h, w, 3)`` uint8 that differ by episode, step and channel (video friendly)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = [5 + (x + y) // 4 + 7 * step + 3 * i + 15 * np.arange(3)[:, None, None] for step in range(t)]  # next step: +7
    return np.clip(np.stack(frames).transpose(0, 2, 3, 1), 0, 255).astype(np.uint8)


def write_lerobot_by_spec(root: Path, n: int = 3, *, camera: str = "image", per_data_file: int = 2, per_video_file: int = 2) -> None:
    """A LeRobot v3.0 dataset of ``n`` episodes of :func:`lerobot_episode`; ``camera`` is "image" (PNG in parquet) or "video"."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    episodes = [lerobot_episode(i) for i in range(n)]
    vectors = ["observation.state", "observation.environment_state", "observation.velocity", "action"]
    features = {k: {"dtype": "float32", "shape": [episodes[0][k].shape[1]], "names": None} for k in vectors}
    features["observation.state"]["names"] = ["x", "y", "z"]
    features["next.reward"] = {"dtype": "float32", "shape": [1], "names": None}
    features["next.success"] = {"dtype": "bool", "shape": [1], "names": None}
    features["observation.images.front"] = {"dtype": camera, "shape": [H, W, 3], "names": ["height", "width", "channel"]}
    if camera == "video":
        features["observation.images.front"]["info"] = {"video.fps": FPS, "video.codec": "av1", "video.pix_fmt": "yuv420p", "video.is_depth_map": False}
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        features[name] = {"dtype": "float32" if name == "timestamp" else "int64", "shape": [1], "names": None}
    info = {
        "codebase_version": "v3.0", "robot_type": "so100", "total_episodes": n, "total_frames": sum(len(e["action"]) for e in episodes),
        "total_tasks": len(TASKS), "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": FPS,
        "splits": {"train": f"0:{n}"}, "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4" if camera == "video" else None, "features": features,
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    tasks = pa.table({"task_index": pa.array([0, 1], pa.int64()), "__index_level_0__": pa.array(list(TASKS))})
    pandas = {"index_columns": ["__index_level_0__"], "columns": [{"name": "task_index", "field_name": "task_index"}]}
    pq.write_table(tasks.replace_schema_metadata({"pandas": json.dumps(pandas)}), root / "meta" / "tasks.parquet")

    rows, tables, index, video = [], {}, 0, {"file": -1, "writer": None, "frames": 0}
    for i, ep in enumerate(episodes):
        t = len(ep["action"])
        file = i // per_data_file
        cols = {k: pa.FixedSizeListArray.from_arrays(pa.array(ep[k].reshape(-1)), ep[k].shape[1]) for k in vectors}
        cols["next.reward"], cols["next.success"] = pa.array(ep["next.reward"]), pa.array(ep["next.success"])
        if camera == "image":
            cols["observation.images.front"] = pa.array([{"bytes": _png(img), "path": None} for img in ep["observation.images.front"]])
        cols.update(
            timestamp=pa.array(np.arange(t, dtype=np.float32) / FPS), frame_index=pa.array(np.arange(t)), episode_index=pa.array(np.full(t, i)),
            index=pa.array(np.arange(index, index + t)), task_index=pa.array(np.full(t, i % 2)),
        )  # fmt: skip
        tables.setdefault(file, []).append(pa.table(cols))
        row = {"episode_index": i, "tasks": [TASKS[i % 2]], "length": t, "data/chunk_index": 0, "data/file_index": file,
               "dataset_from_index": index, "dataset_to_index": index + t}  # fmt: skip
        if camera == "video":
            if i // per_video_file != video["file"]:
                if video["writer"] is not None:
                    video["writer"].close()
                video.update(file=i // per_video_file, frames=0, writer=_Mp4(root / f"videos/observation.images.front/chunk-000/file-{i // per_video_file:03d}.mp4"))
            prefix = "videos/observation.images.front/"
            row.update({prefix + "chunk_index": 0, prefix + "file_index": video["file"], prefix + "from_timestamp": video["frames"] / FPS,
                        prefix + "to_timestamp": (video["frames"] + t) / FPS})  # fmt: skip
            video["writer"].add(ep["observation.images.front"])
            video["frames"] += t
        row["stats/action/mean"] = ep["action"].mean(axis=0).tolist()
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": i // 2})
        rows.append(row)
        index += t
    if video["writer"] is not None:
        video["writer"].close()
    for file, parts in tables.items():
        path = root / f"data/chunk-000/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(parts), path)
    for file in sorted({r["meta/episodes/file_index"] for r in rows}):  # episodes table split over files too
        path = root / f"meta/episodes/chunk-000/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([r for r in rows if r["meta/episodes/file_index"] == file]), path)


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


class _Mp4:
    """An AV1 mp4 as LeRobot encodes it (libsvtav1, yuv420p, g=2, crf=30); frame k at k / FPS."""

    def __init__(self, path: Path):
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream("libsvtav1", rate=Fraction(FPS), options={"g": "2", "crf": "30"})
        self.stream.width, self.stream.height, self.stream.pix_fmt = W, H, "yuv420p"
        self.k = 0

    def add(self, images: np.ndarray) -> None:
        import av

        for image in images:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, self.k = self.k, self.k + 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


# ------------------------------------------------------------------------------ robomimic

ROBOMIMIC_LOW_DIM = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2, "object": 10, "robot0_joint_pos": 7}
ROBOMIMIC_DEMOS = ("demo_0", "demo_2", "demo_10")  # numeric order, not string order (demo_10 < demo_2 as strings)


def robomimic_demo(i: int) -> dict[str, np.ndarray]:
    """Demo ``i``: obs keys (robosuite names), actions, rewards (1 on the last 3 steps of even demos), dones."""
    t = 10 + 4 * i
    steps = np.arange(t, dtype=np.float64)[:, None]
    out = {f"obs/{k}": i * 1000 + steps * 10 + np.arange(d) + 0.5 * j for j, (k, d) in enumerate(ROBOMIMIC_LOW_DIM.items())}
    out["obs/agentview_image"] = gradient_images(i, t, 32, 32)
    out["obs/robot0_eye_in_hand_image"] = 255 - gradient_images(i, t, 32, 32)
    out["obs/agentview_depth"] = np.full((t, 32, 32, 1), 0.5 + i, np.float32)
    out["actions"] = np.clip(np.concatenate([np.sin(steps + i) * np.ones((1, 6)), np.ones((t, 1)) * (-1) ** i], axis=1), -1, 1)
    out["rewards"] = np.where((np.arange(t) >= t - 3) & (i % 2 == 0), 1.0, 0.0)
    out["dones"] = (np.arange(t) == t - 1).astype(np.int64)
    return out


def write_robomimic(path: Path, *, skip: tuple[str, str] | None = None) -> None:
    """robomimic layout with h5py; ``skip=(demo, key)`` leaves one dataset out of one demo."""
    import h5py

    env_args = {"env_name": "Lift", "env_type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20, "reward_shaping": False}}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for i, name in enumerate(ROBOMIMIC_DEMOS):
            demo = robomimic_demo(i)
            group = data.create_group(name)
            n = len(demo["actions"])
            group.attrs["num_samples"] = n
            group.create_dataset("states", data=np.zeros((n, 32)))
            for key, value in demo.items():
                if (name, key) != skip:
                    group.create_dataset(key, data=value, compression="gzip" if value.dtype == np.uint8 else None)
                    if key.startswith("obs/"):
                        group.create_dataset("next_" + key, data=np.roll(value, -1, axis=0))
            total += n
        data.attrs["total"] = total
        data.attrs["env_args"] = json.dumps(env_args)
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_10"]))
        f.create_dataset("mask/valid", data=np.array([b"demo_2"]))


# ------------------------------------------------------------------------------ the LeRobot library itself

LEROBOT_SCRIPT = r'''
"""Run with PYTHONPATH=<repo>: create a dataset with LeRobotDataset.create, load an export with LeRobotDataset."""
import json, sys

import torch

try:  # torchvision builds that lack their C++ ops fail at import; LeRobot only needs its transforms
    import torchvision  # noqa: F401
except RuntimeError as e:
    if "does not exist" not in str(e):
        raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
try:
    from lerobot.datasets.lerobot_dataset import CODEBASE_VERSION, LeRobotDataset
except Exception as e:
    print(f"LEROBOT_UNAVAILABLE {type(e).__name__}: {e}")
    sys.exit(3)
import numpy as np

from tests.convert_fixtures import FPS, H, TASKS, W, lerobot_episode

create_root, export_root, npz_out = sys.argv[1:4]
# 1. a dataset written by the library (video camera; (1,)-shaped features such as next.reward are left
#    out: lerobot 0.4.4 cannot encode them under numpy 2.4, `float()` of a 1-element array raises)
features = {
    "observation.state": {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]},
    "action": {"dtype": "float32", "shape": (2,), "names": ["a", "b"]},
    "observation.images.front": {"dtype": "video", "shape": (H, W, 3), "names": ["height", "width", "channels"]},
}
ds = LeRobotDataset.create("kit/created", fps=FPS, features=features, root=create_root, robot_type="so100", use_videos=True)
for i in range(3):
    ep = lerobot_episode(i)
    for t in range(len(ep["action"])):
        ds.add_frame({k: ep[k][t] for k in features} | {"task": TASKS[i % 2]})
    ds.save_episode()
ds.finalize()

# 2. our export, read back by the library
ds = LeRobotDataset("kit/export", root=export_root)
items = [ds[i] for i in range(len(ds))]
arrays = {k: np.stack([item[k].numpy() for item in items]) for k in items[0] if k != "task"}
np.savez(npz_out, **arrays)
print(json.dumps({"codebase_version": CODEBASE_VERSION, "len": len(ds), "num_episodes": ds.num_episodes, "fps": ds.fps,
                  "video_keys": ds.meta.video_keys, "robot_type": ds.meta.robot_type, "tasks": [item["task"] for item in items],
                  "stats_keys": sorted(ds.meta.stats)}))
'''
