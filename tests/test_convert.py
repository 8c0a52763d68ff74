"""`robot convert`: LeRobot v3 and robomimic datasets in their own layouts into our store, our store out to LeRobot.

Camera frames through mp4 (AV1, yuv420p) are lossy: they are compared with a
mean absolute error below IMAGE_MAE (of 255) per frame (1.2-2.5 measured on
84x84 sim frames) and must not match a neighbouring step better than their own.
Everything else must survive exactly.

The tests with the LeRobot library itself run where ``import lerobot`` works in
this interpreter or in ``LEROBOT_PYTHON``; they skip otherwise. lerobot 0.4.4
pins torch<2.11, so it lives in an overlay venv that reuses the kit's torch::

    python -m venv /work/venv-lerobot
    echo $PWD/.venv/lib/python3.11/site-packages > /work/venv-lerobot/lib/python3.11/site-packages/zz-kit.pth
    /work/venv-lerobot/bin/pip install --no-deps lerobot==0.4.4 torchvision==0.28.0 torchcodec==0.13.0 \
        datasets==4.8.5 huggingface_hub==0.35.3 fsspec==2026.2.0 pandas dill multiprocess xxhash jsonlines \
        draccus==0.10.0 av==15.1.0 'httpx<1' httpcore accelerate==1.10.1
    apt-get install libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8
    LEROBOT_PYTHON=/work/venv-lerobot/bin/python pytest tests/test_convert.py

(torchcodec decodes LeRobot's videos with the system FFmpeg; torchvision 0.28's
``io.VideoReader`` is gone, so LeRobot's pyav backend cannot.)
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robot.store import ZarrEpisodeStore
from robot.types import ACTION, DONE, REWARD, STATE, SUCCESS, Feature
from tests.convert_fixtures import (
    FPS, LEROBOT_SCRIPT, ROBOMIMIC_DEMOS, ROBOMIMIC_LOW_DIM, TASKS, lerobot_episode, robomimic_demo, write_lerobot_by_spec, write_robomimic,
)  # fmt: skip
from workflow.convert import ConvertConfig, ConvertError, convert, detect_format
from workflow.convert.mapping import IMPORTED_FROM

ROOT = Path(__file__).resolve().parents[1]
IMAGE_MAE = 4.0
needs_av = pytest.mark.skipif(importlib.util.find_spec("av") is None, reason="PyAV (`av`, the interop extra) is not installed: no mp4 encode/decode")


def _convert(src, dst, **kw):
    return convert(ConvertConfig(src=Path(src), dst=Path(dst), progress=False, **kw))


def _assert_frames_match(decoded: np.ndarray, original: np.ndarray) -> None:
    """Every decoded frame within IMAGE_MAE of its original, and not closer to a neighbour (no off-by-one)."""
    assert decoded.shape == original.shape
    mae = lambda a, b: np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))  # noqa: E731  (T,)
    own = mae(decoded, original)
    assert own.max() < IMAGE_MAE, f"frame {own.argmax()} is off by {own.max():.2f} on average"
    assert np.all(own[1:] <= mae(decoded[1:], original[:-1]) + 0.5), "a frame matches the previous step better"
    assert np.all(own[:-1] <= mae(decoded[:-1], original[1:]) + 0.5), "a frame matches the next step better"


def _without_origin(meta):
    return {**meta.to_dict(), "extra": {k: v for k, v in meta.extra.items() if k != IMPORTED_FROM}}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """4 push episodes by the scripted expert with the top camera (84x84), as `robot record` writes them."""
    from workflow.record import RecordConfig, record

    out = tmp_path_factory.mktemp("rec") / "push.zarr"
    record(RecordConfig(task="push", device="scripted", episodes=4, out=out, cameras=("top",)), stream=io.StringIO())
    return out


# ------------------------------------------------------------------------------ our store -> LeRobot -> our store


@needs_av
def test_export_writes_the_v3_layout_and_imports_back(recorded, tmp_path):
    import pyarrow.parquet as pq

    report = _convert(recorded, tmp_path / "lr", data_file_mb=0.003)
    store = ZarrEpisodeStore.open(recorded)
    data, ends = store.load(), store.episode_ends
    assert report.episodes == 4 and report.steps == store.num_steps
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert (info["codebase_version"], info["fps"], info["total_episodes"], info["total_frames"], info["robot_type"]) == ("v3.0", 10, 4, store.num_steps, "sim:push")
    feats = info["features"]
    assert feats["observation.state"] == {"dtype": "float32", "shape": [8], "names": list(store.features[STATE].names)}
    assert feats["observation.images.top"]["dtype"] == "video" and feats["observation.images.top"]["shape"] == [84, 84, 3]
    assert feats["observation.images.top"]["info"]["video.codec"] == "av1"
    assert feats["next.reward"]["shape"] == [1] and feats["next.done"]["dtype"] == "bool" and feats["episode_index"]["dtype"] == "int64"

    files = sorted((tmp_path / "lr/data").glob("*/*.parquet"))
    assert len(files) >= 2, "data_file_mb=0.003 should split the data over files"
    frames = pq.read_table(files).sort_by("index")
    assert frames.schema.field("observation.state").type.list_size == 8
    assert np.array_equal(frames.column("index").to_numpy(), np.arange(store.num_steps))
    assert np.array_equal(np.stack(frames.column("observation.state").to_numpy(zero_copy_only=False)), data[STATE])
    assert np.array_equal(frames.column("next.success").to_numpy(), data[SUCCESS])
    starts = np.concatenate([[0], ends[:-1]])
    assert np.array_equal(np.flatnonzero(frames.column("frame_index").to_numpy() == 0), starts)
    assert np.allclose(frames.column("timestamp").to_numpy(), np.concatenate([np.arange(e - s) / 10 for s, e in zip(starts, ends)]))

    episodes = pq.read_table(next((tmp_path / "lr/meta/episodes").glob("*/*.parquet"))).to_pylist()
    assert [(e["dataset_from_index"], e["dataset_to_index"]) for e in episodes] == list(zip(starts.tolist(), ends.tolist()))
    video = "videos/observation.images.top/"
    for prev, ep in zip(episodes, episodes[1:]):  # episodes share the mp4, one after another in time
        if ep[video + "file_index"] == prev[video + "file_index"]:
            assert ep[video + "from_timestamp"] == pytest.approx(prev[video + "to_timestamp"])
    assert np.allclose(episodes[1]["stats/action/mean"], data[ACTION][starts[1] : ends[1]].mean(axis=0), atol=1e-6)
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())
    assert np.allclose(stats["action"]["mean"], data[ACTION].mean(axis=0), atol=1e-5)
    assert np.allclose(stats["action"]["std"], data[ACTION].std(axis=0), atol=1e-5)
    assert stats["action"]["count"] == [store.num_steps] and np.array(stats["observation.images.top"]["mean"]).shape == (3, 1, 1)
    tasks = pq.read_table(tmp_path / "lr/meta/tasks.parquet")
    assert tasks.column("__index_level_0__").to_pylist() == ["push"] and tasks.column("task_index").to_pylist() == [0]

    _convert(tmp_path / "lr", tmp_path / "back.zarr")
    back = ZarrEpisodeStore.open(tmp_path / "back.zarr")
    assert back.features == store.features and np.array_equal(back.episode_ends, ends)
    for i in range(store.num_episodes):
        a, b = store.episode(i), back.episode(i)
        for key in a.data:
            if key.startswith("observation.images."):
                _assert_frames_match(b.data[key], a.data[key])
            else:
                assert np.array_equal(a.data[key], b.data[key]), key
        assert _without_origin(b.meta) == a.meta.to_dict()
        assert b.meta.extra[IMPORTED_FROM] == {"format": "lerobot", "path": str(tmp_path / "lr"), "episode": f"episode {i}"}


@needs_av
def test_h264_export_round_trips_too(recorded, tmp_path):
    _convert(recorded, tmp_path / "lr", vcodec="libx264", crf=18)
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    assert info["features"]["observation.images.top"]["info"]["video.codec"] == "h264"
    _convert(tmp_path / "lr", tmp_path / "back.zarr")
    store, back = ZarrEpisodeStore.open(recorded), ZarrEpisodeStore.open(tmp_path / "back.zarr")
    for i in range(store.num_episodes):
        _assert_frames_match(back.episode(i).data["observation.images.top"], store.episode(i).data["observation.images.top"])


def test_export_refuses_what_lerobot_cannot_hold_and_leaves_nothing(tmp_path):
    from tests.store_fixtures import make_episode, make_meta

    feats = {STATE: Feature((4,)), "observation.pointcloud": Feature((16, 3)), ACTION: Feature((2,))}
    with ZarrEpisodeStore.create(tmp_path / "s.zarr", feats) as store:
        ep = make_episode(0)
        store.append_episode({STATE: ep[STATE], ACTION: ep[ACTION], "observation.pointcloud": np.zeros((len(ep[ACTION]), 16, 3), np.float32)}, make_meta(0))
    with pytest.raises(ConvertError, match=r"observation.pointcloud is float32 16x3.*--drop observation.pointcloud"):
        _convert(tmp_path / "s.zarr", tmp_path / "lr")
    assert not (tmp_path / "lr").exists() and not (tmp_path / "lr.partial").exists()
    report = _convert(tmp_path / "s.zarr", tmp_path / "lr", drop=("observation.pointcloud",))
    assert "observation.pointcloud" not in json.loads((tmp_path / "lr/meta/info.json").read_text())["features"]
    assert any(m.source == "observation.pointcloud" and m.target == "-" for m in report.mappings)
    with pytest.raises(ConvertError, match="already exists"):
        _convert(tmp_path / "s.zarr", tmp_path / "lr")


# ------------------------------------------------------------------------------ LeRobot layout -> our store


def test_import_lerobot_layout_with_images_in_parquet(tmp_path):
    write_lerobot_by_spec(tmp_path / "lr", 3, camera="image", per_data_file=2)
    assert detect_format(tmp_path / "lr") == "lerobot"
    report = _convert(tmp_path / "lr", tmp_path / "s.zarr", state_keys=("observation.state", "observation.environment_state"))
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 3 and report.steps == store.num_steps
    assert store.features[STATE].names == ("x", "y", "z", "observation.environment_state.0", "observation.environment_state.1")
    assert set(store.features) == {STATE, "observation.images.front", ACTION, REWARD, SUCCESS, DONE}
    for i in range(3):
        want, ep = lerobot_episode(i), store.episode(i)
        assert np.array_equal(ep.data[STATE], np.concatenate([want["observation.state"], want["observation.environment_state"]], axis=1))
        assert np.array_equal(ep.data[ACTION], want["action"]) and np.array_equal(ep.data[REWARD], want["next.reward"])
        assert np.array_equal(ep.data[SUCCESS], want["next.success"]) and np.array_equal(ep.data["observation.images.front"], want["observation.images.front"])
        assert np.array_equal(ep.data[DONE], np.arange(len(want["action"])) == len(want["action"]) - 1)  # derived: the source has no next.done
        assert (ep.meta.task, ep.meta.robot, ep.meta.fps, ep.meta.success) == (TASKS[i % 2], "so100", FPS, i % 2 == 0)
    left_out = {m.source for m in report.mappings if m.target == "-"}
    assert left_out == {"observation.velocity"}


@needs_av
def test_import_lerobot_videos_shared_across_episodes_and_files(tmp_path):
    write_lerobot_by_spec(tmp_path / "lr", 5, camera="video", per_data_file=3, per_video_file=2)
    assert len(list((tmp_path / "lr/videos/observation.images.front").glob("*/*.mp4"))) == 3
    _convert(tmp_path / "lr", tmp_path / "s.zarr")
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 5 and store.features[STATE].shape == (3,)  # default state: observation.state only
    for i in range(5):
        want, ep = lerobot_episode(i), store.episode(i)
        assert np.array_equal(ep.data[STATE], want["observation.state"])
        _assert_frames_match(ep.data["observation.images.front"], want["observation.images.front"])


def test_bad_lerobot_info_json_is_a_clear_error_and_writes_nothing(tmp_path):
    write_lerobot_by_spec(tmp_path / "lr", 2)
    info_path = tmp_path / "lr/meta/info.json"
    good = info_path.read_text()
    info_path.write_text(good[: len(good) // 2])  # truncated JSON
    with pytest.raises(ConvertError, match=r"meta/info.json: not valid JSON .*re-download"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    info = json.loads(good)
    del info["features"]["action"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(ConvertError, match=r"no 'action' feature"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    info = json.loads(good) | {"codebase_version": "v2.1"}
    info_path.write_text(json.dumps(info))
    with pytest.raises(ConvertError, match=r"v2.1.*convert_dataset_v21_to_v30"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    info = json.loads(good)
    info["features"]["observation.state"]["dtype"] = "string"
    info_path.write_text(json.dumps(info))
    with pytest.raises(ConvertError, match=r"observation.state is string \[3\].*--drop observation.state"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


@needs_av
def test_damaged_video_fails_on_its_episode_and_resume_finishes_the_import(tmp_path):
    write_lerobot_by_spec(tmp_path / "lr", 4, camera="video", per_video_file=2)
    second = tmp_path / "lr/videos/observation.images.front/chunk-000/file-001.mp4"
    intact = second.read_bytes()
    second.write_bytes(b"not an mp4")
    with pytest.raises(ConvertError, match=r"file-001.mp4: not a readable video"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 2  # episodes 0-1 live in the intact file; no half episode
    assert np.array_equal(store.episode(1).data[ACTION], lerobot_episode(1)["action"])
    with pytest.raises(ConvertError, match="--resume"):
        _convert(tmp_path / "lr", tmp_path / "s.zarr")
    second.write_bytes(intact)
    report = _convert(tmp_path / "lr", tmp_path / "s.zarr", resume=True)
    assert (report.resumed, report.episodes) == (2, 2)
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert [m.extra[IMPORTED_FROM]["episode"] for m in store.metas] == [f"episode {i}" for i in range(4)]


# ------------------------------------------------------------------------------ robomimic HDF5 -> our store


def test_import_robomimic_maps_keys_splits_and_success(tmp_path):
    write_robomimic(tmp_path / "lift.hdf5")
    assert detect_format(tmp_path / "lift.hdf5") == "robomimic"
    report = _convert(tmp_path / "lift.hdf5", tmp_path / "s.zarr")
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 3 and report.steps == sum(len(robomimic_demo(i)["actions"]) for i in range(3))
    assert set(store.features) == {STATE, "observation.images.agentview", "observation.images.robot0_eye_in_hand", ACTION, REWARD, DONE, SUCCESS}
    assert store.features[STATE].shape == (19,) and store.features[STATE].names[:4] == ("robot0_eef_pos_0", "robot0_eef_pos_1", "robot0_eef_pos_2", "robot0_eef_quat_0")
    default = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object")
    for i, name in enumerate(ROBOMIMIC_DEMOS):  # demo_0, demo_2, demo_10 in numeric order
        want, ep = robomimic_demo(i), store.episode(i)
        assert np.array_equal(ep.data[STATE], np.concatenate([want[f"obs/{k}"] for k in default], axis=1).astype(np.float32))
        assert np.array_equal(ep.data["observation.images.agentview"], want["obs/agentview_image"])
        assert np.array_equal(ep.data[ACTION], want["actions"].astype(np.float32)) and np.array_equal(ep.data[REWARD], want["rewards"])
        assert np.array_equal(ep.data[SUCCESS], want["rewards"] >= 1) and ep.data[DONE].sum() == 1 and ep.data[DONE][-1]
        assert (ep.meta.task, ep.meta.robot, ep.meta.fps, ep.meta.success) == ("Lift", "Panda", 20.0, i % 2 == 0)
        assert ep.meta.extra["filter_keys"] == (["valid"] if name == "demo_2" else ["train"])
    notes = {m.source: m.note for m in report.mappings if m.target == "-"}
    assert "not RGB uint8" in notes["obs/agentview_depth"] and "--state-keys" in notes["obs/robot0_joint_pos"]

    _convert(tmp_path / "lift.hdf5", tmp_path / "valid.zarr", filter_key="valid", state_keys=("object", "robot0_joint_pos"), task="lift-mh")
    valid = ZarrEpisodeStore.open(tmp_path / "valid.zarr")
    want = robomimic_demo(1)
    assert valid.num_episodes == 1 and valid.metas[0].extra[IMPORTED_FROM]["episode"] == "demo_2" and valid.metas[0].task == "lift-mh"
    assert np.array_equal(valid.episode(0).data[STATE], np.concatenate([want["obs/object"], want["obs/robot0_joint_pos"]], axis=1).astype(np.float32))
    assert valid.features[STATE].shape == (ROBOMIMIC_LOW_DIM["object"] + ROBOMIMIC_LOW_DIM["robot0_joint_pos"],)


def test_robomimic_missing_key_stops_before_the_demo_and_resume_continues(tmp_path):
    write_robomimic(tmp_path / "lift.hdf5", skip=("demo_2", "obs/agentview_image"))
    with pytest.raises(ConvertError, match=r"data/demo_2: no obs/agentview_image"):
        _convert(tmp_path / "lift.hdf5", tmp_path / "s.zarr")
    store = ZarrEpisodeStore.open(tmp_path / "s.zarr")
    assert store.num_episodes == 1 and np.array_equal(store.episode(0).data[ACTION], robomimic_demo(0)["actions"].astype(np.float32))
    write_robomimic(tmp_path / "lift.hdf5")  # the fixed file
    with pytest.raises(ConvertError, match=r"other features"):
        _convert(tmp_path / "lift.hdf5", tmp_path / "s.zarr", resume=True, state_keys=("object",))
    report = _convert(tmp_path / "lift.hdf5", tmp_path / "s.zarr", resume=True)
    assert (report.resumed, report.episodes) == (1, 2)
    assert [m.extra[IMPORTED_FROM]["episode"] for m in ZarrEpisodeStore.open(tmp_path / "s.zarr").metas] == list(ROBOMIMIC_DEMOS)


def test_truncated_or_unmappable_robomimic_is_a_clear_error(tmp_path):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path)
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size * 2 // 3)
    with pytest.raises(ConvertError, match=r"lift.hdf5: .*truncated or damaged"):
        _convert(path, tmp_path / "s.zarr", src_format="robomimic")
    assert not (tmp_path / "s.zarr").exists()
    write_robomimic(path)
    with pytest.raises(ConvertError, match=r"--state-keys agentview_depth: it is not a low-dim obs key"):
        _convert(path, tmp_path / "s.zarr", state_keys=("agentview_depth",))
    with pytest.raises(ConvertError, match=r"--filter-key test: .*\['train', 'valid'\]"):
        _convert(path, tmp_path / "s.zarr", filter_key="test")
    assert not (tmp_path / "s.zarr").exists()


# ------------------------------------------------------------------------------ the LeRobot library itself


@pytest.fixture(scope="module")
def lerobot_run(recorded, tmp_path_factory):
    """Run LEROBOT_SCRIPT once in an interpreter where lerobot imports (LEROBOT_PYTHON, else this one)."""
    python = os.environ.get("LEROBOT_PYTHON", sys.executable)
    if python == sys.executable and importlib.util.find_spec("lerobot") is None:
        pytest.skip("the LeRobot library is not installed here; set LEROBOT_PYTHON to an interpreter where `import lerobot` works")
    pytest.importorskip("av", reason="PyAV is needed to export videos")
    tmp = tmp_path_factory.mktemp("lerobot")
    _convert(recorded, tmp / "export")
    (tmp / "script.py").write_text(LEROBOT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([python, str(tmp / "script.py"), str(tmp / "created"), str(tmp / "export"), str(tmp / "loaded.npz")],
                         cwd=tmp, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    if out.returncode == 3:
        pytest.skip(f"{python} cannot import the LeRobot library: {out.stdout.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, json.loads(out.stdout.strip().splitlines()[-1])


def test_dataset_created_by_lerobot_imports(lerobot_run):
    tmp, _ = lerobot_run
    _convert(tmp / "created", tmp / "created.zarr")
    store = ZarrEpisodeStore.open(tmp / "created.zarr")
    assert store.num_episodes == 3 and set(store.features) == {STATE, "observation.images.front", ACTION, DONE}
    for i in range(3):
        want, ep = lerobot_episode(i), store.episode(i)
        assert np.array_equal(ep.data[STATE], want["observation.state"]) and np.array_equal(ep.data[ACTION], want["action"])
        _assert_frames_match(ep.data["observation.images.front"], want["observation.images.front"])
        assert (ep.meta.task, ep.meta.robot, ep.meta.fps, ep.meta.success) == (TASKS[i % 2], "so100", FPS, True)
        assert "unlabelled" in ep.meta.extra["success_label"]


def test_our_export_loads_in_lerobot(lerobot_run, recorded):
    tmp, summary = lerobot_run
    store = ZarrEpisodeStore.open(recorded)
    data = store.load()
    assert (summary["codebase_version"], summary["len"], summary["num_episodes"], summary["fps"]) == ("v3.0", store.num_steps, 4, 10)
    assert summary["video_keys"] == ["observation.images.top"] and summary["robot_type"] == "sim:push" and set(summary["tasks"]) == {"push"}
    with np.load(tmp / "loaded.npz") as loaded:
        assert np.array_equal(loaded["observation.state"], data[STATE]) and np.array_equal(loaded[ACTION], data[ACTION])
        assert np.array_equal(loaded["next.reward"], data[REWARD]) and np.array_equal(loaded["next.done"], data[DONE])
        assert np.array_equal(loaded["episode_index"], np.repeat(np.arange(4), np.diff(np.concatenate([[0], store.episode_ends]))))
        frames = np.round(loaded["observation.images.top"].transpose(0, 2, 3, 1) * 255).astype(np.uint8)  # (T, 3, H, W) float -> uint8 HWC
    _assert_frames_match(frames, data["observation.images.top"])


# ------------------------------------------------------------------------------ command line


def test_cli_converts_with_a_summary_and_fails_in_one_line(tmp_path):
    write_robomimic(tmp_path / "lift.hdf5")
    run = lambda *a: subprocess.run([sys.executable, "-m", "robot.cli", "convert", *a, "--no-progress"], capture_output=True, text=True, timeout=120, cwd=ROOT)  # noqa: E731
    out = run(str(tmp_path / "lift.hdf5"), str(tmp_path / "s.zarr"), "--state-keys", "robot0_eef_pos,object", "--filter-key", "train")
    assert out.returncode == 0, out.stderr
    assert "robomimic" in out.stdout and "obs/robot0_eef_pos + obs/object  observation.state" in out.stdout
    assert ZarrEpisodeStore.open(tmp_path / "s.zarr").num_episodes == 2
    out = run(str(tmp_path / "lift.hdf5"), str(tmp_path / "s.zarr"))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0 and "already exists; pass --resume" in out.stderr
