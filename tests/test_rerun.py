"""Rerun views: .rrd files are written, then read back chunk by chunk to check entities,
timelines and row counts (stored episodes, training curves, live steps with policy internals)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from robot.metrics import JsonlMetrics
from robot.viewer import LiveLogger, episode_blueprint, open_recording
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta, Feature
from workflow.view import view_store

FEATURES = {
    "observation.state": Feature((3,), names=("x", "y", "gripper")),
    "observation.images.front": Feature((24, 32, 3), "uint8"),
    "observation.images.wrist": Feature((24, 32, 3), "uint8"),
    "observation.pointcloud": Feature((16, 3)),
    "action": Feature((2,), names=("dx", "dy")),
    "action.commanded": Feature((2,)),
    "reward": Feature(()),
    "reward.step": Feature(()),
    "done": Feature((), "bool"),
    "success": Feature((), "bool"),
    "intervention": Feature((), "bool"),
}
LENGTHS = (12, 20)


@pytest.fixture(autouse=True)
def strict_rerun():
    """Rerun only warns about malformed log calls by default; here they fail the test."""
    import rerun as rr

    rr.set_strict_mode(True)
    yield
    rr.set_strict_mode(False)


def _episode(t: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    steps = np.arange(t)
    frames = {k: rng.integers(0, 255, (t, *f.shape), dtype=np.uint8) if f.dtype == "uint8" else rng.normal(size=(t, *f.shape)).astype(np.float32) for k, f in FEATURES.items()}
    frames["reward.step"] = np.full(t, -0.01, np.float32)
    frames["reward"] = frames["reward.step"] + (steps == t - 1)
    frames["done"] = frames["success"] = steps == t - 1
    frames["intervention"] = (steps >= 3) & (steps < 6)  # one takeover and hand-back
    return frames


def _store(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with ZarrEpisodeStore.create(path, FEATURES) as store:
        for i, t in enumerate(LENGTHS):
            meta = EpisodeMeta("push", "sim:push", 10.0, True, seed=i, extra={"end": "limit", "safety": {"workspace": 2, "max_step": 0}})
            store.append_episode(_episode(t, rng), meta)
    return path


def read_rrd(path: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """``{(application, recording): {entity: {"rows", "timelines", "static", "batches"}}}`` of a file."""
    from rerun.chunk import RrdReader

    reader = RrdReader(path)
    out: dict[tuple[str, str], dict[str, dict]] = {}
    for entry in reader.recordings():
        entities: dict[str, dict] = defaultdict(lambda: {"rows": 0, "timelines": set(), "static": 0, "batches": []})
        for chunk in reader.stream(store=entry):
            e = entities[chunk.entity_path]
            if chunk.is_static:
                e["static"] += chunk.num_rows
            else:
                e["rows"] += chunk.num_rows
                e["timelines"].update(chunk.timeline_names)
                e["batches"].append(chunk.to_record_batch())
        out[(entry.application_id, entry.recording_id)] = dict(entities)
    return out


def _robot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robot.cli", *args], capture_output=True, text=True, timeout=120)


def _column(entity: dict, name: str) -> list:
    return [v for batch in entity["batches"] if name in batch.schema.names for v in batch.column(name).to_pylist()]


def test_stored_episodes_read_back_with_every_view(tmp_path):
    store = _store(tmp_path / "demo.zarr")
    report = view_store(store, all=True, save=tmp_path / "all.rrd")
    assert report.episodes == (0, 1) and "open it with `rerun" in report.summary()
    recordings = read_rrd(tmp_path / "all.rrd")
    assert sorted(recordings) == [("robot-view", "demo.zarr/episode-0"), ("robot-view", "demo.zarr/episode-1")]
    for i, t in enumerate(LENGTHS):
        ents = recordings[("robot-view", f"demo.zarr/episode-{i}")]
        per_step = [
            "/observation/images/front", "/observation/images/wrist", "/observation/pointcloud",
            "/observation/state/x", "/observation/state/y", "/observation/state/gripper",
            "/action/dx/applied", "/action/dy/applied", "/action/dx/commanded", "/action/dy/commanded",
            "/reward/total", "/reward/step", "/flags/done", "/flags/success", "/flags/intervention",
        ]  # fmt: skip
        for path in per_step:
            assert ents[path]["rows"] == t and {"step", "time"} <= ents[path]["timelines"], path
        front = ents["/observation/images/front"]
        assert _column(front, "EncodedImage:media_type") == [["image/jpeg"]] * t
        assert bytes(_column(front, "EncodedImage:blob")[0][0][:2]) == b"\xff\xd8"  # JPEG magic
        assert _column(front, "step") == list(range(t))
        assert _column(ents["/reward/total"], "time")[-1].total_seconds() == pytest.approx((t - 1) / 10.0)
        assert len(_column(ents["/observation/pointcloud"], "Points3D:positions")[0]) == 16
        texts = [x[0] for x in _column(ents["/events"], "TextLog:text")]
        assert texts == ["operator takes over", "operator hands back", "task succeeds", "episode ends: success (limit)", "safety interventions this episode: workspace 2"]
        assert ents["/episode"]["static"] == 1 and ents["/episode"]["rows"] == 0
    from rerun.chunk import RrdReader

    assert {b.application_id for b in RrdReader(tmp_path / "all.rrd").blueprints()} == {"robot-view"}


def test_view_cli_saves_one_episode_next_to_training_curves(tmp_path):
    store = _store(tmp_path / "demo.zarr")
    run = tmp_path / "run"
    with JsonlMetrics(run / "metrics.jsonl") as metrics:
        for step in range(0, 50, 5):
            metrics.log({"losses/denoise": 1.0 / (step + 1), "charts/lr": 3e-4}, step)
        metrics.log({"losses/denoise_val": 0.5}, 50)
    out = tmp_path / "last.rrd"
    done = _robot("view", str(store), "--episode", "-1", "--save", str(out), "--metrics", str(run))
    assert done.returncode == 0, done.stderr
    assert f"to {out}" in done.stdout and "and 3 training curves" in done.stdout
    recordings = read_rrd(out)
    assert sorted(recordings) == [("robot-train", "run/metrics"), ("robot-view", "demo.zarr/episode-1")]
    curves = recordings[("robot-train", "run/metrics")]
    assert curves["/train/losses/denoise"]["rows"] == 10 and curves["/train/losses/denoise"]["timelines"] == {"train_step", "wall_time"}
    assert _column(curves["/train/losses/denoise"], "train_step") == list(range(0, 50, 5))
    assert curves["/train/charts/lr"]["rows"] == 10 and curves["/train/losses/denoise_val"]["rows"] == 1
    assert recordings[("robot-view", "demo.zarr/episode-1")]["/action/dx/applied"]["rows"] == LENGTHS[1]

    bad = _robot("view", str(store), "--episode", "7", "--save", str(out))
    assert bad.returncode == 2 and "no episode 7; the store has 2" in bad.stderr and bad.stderr.count("\n") == 1


def test_view_without_display_serves_and_prints_the_connect_command(tmp_path):
    store = _store(tmp_path / "demo.zarr")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen([sys.executable, "-m", "robot.cli", "view", str(store)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C" in line:
                break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    text = "".join(lines) + proc.stderr.read()
    assert "sent 1 episode" in text and "rerun --connect rerun+http://127.0.0.1:" in text and "ssh -L" in text


def test_live_logger_logs_steps_and_the_denoising_chain(tmp_path):
    features = {k: f for k, f in FEATURES.items() if k not in ("observation.pointcloud", "observation.images.wrist")}
    out = tmp_path / "live.rrd"
    rec = open_recording("robot-eval", save=out, recording_id="live", blueprint=episode_blueprint(features, policy_internals=True))
    logger = LiveLogger(rec, features, fps=20.0)
    rng = np.random.default_rng(1)
    K, T, n = 10, 8, 12
    for step in range(n):
        obs = {"observation.state": rng.normal(size=3), "observation.images.front": rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), "timestamp": 5.0 + step}
        flags = {"success": step == n - 1, "intervention": step in (4, 5), "done": step == n - 1}
        logger.log_step(step, obs, rng.normal(size=2), {"step": -0.01, "success": float(step == n - 1)}, flags, {"action.commanded": rng.normal(size=2)})
        if step % 4 == 0:
            chain = rng.normal(size=(K + 1, T, 2))
            logger.log_policy_internals(step, chain, chunk_start=True, q=rng.normal(size=2), v=float(rng.normal()))
    rec.flush()
    rec.disconnect()
    ents = read_rrd(out)[("robot-eval", "live")]
    for path in ("/observation/images/front", "/observation/state/gripper", "/action/dy/applied", "/action/dy/commanded", "/reward/total", "/reward/step", "/flags/intervention"):
        assert ents[path]["rows"] == n and {"step", "time"} <= ents[path]["timelines"], path
    for path in ("/policy/denoising/dx", "/policy/denoising/dy", "/policy/chunk_start", "/policy/q/q1", "/policy/q/q2", "/policy/v/v"):
        assert ents[path]["rows"] == 3, path
    strips = _column(ents["/policy/denoising/dx"], "LineStrips2D:strips")[0]
    assert len(strips) == T and len(strips[0]) == K + 1  # one strip per chunk position, K+1 denoising iterates each
    assert _column(ents["/reward/total"], "Scalars:scalars")[-1] == [pytest.approx(0.99)]
    assert _column(ents["/reward/total"], "time")[-1].total_seconds() == pytest.approx((n - 1) / 20.0)
    texts = [x[0] for x in _column(ents["/events"], "TextLog:text")]
    assert texts.count("operator takes over") == 1 and texts.count("operator hands back") == 1 and "task succeeds" in texts
    assert [t for t in texts if t.startswith("chunk")] == ["chunk 1 starts", "chunk 2 starts", "chunk 3 starts"]
    with pytest.raises(ValueError, match=r"\(K\+1, T, Da\)"):
        logger.log_policy_internals(n, np.zeros(4))


def test_recorded_push_episodes_view_end_to_end(tmp_path):
    from workflow.record import RecordConfig, record

    store = tmp_path / "push.zarr"
    record(RecordConfig(task="push", device="scripted", episodes=2, out=store, cameras=("top", "front"), image_size=32), stream=io.StringIO())
    view_store(store, episode=0, save=tmp_path / "push.rrd")
    ents = read_rrd(tmp_path / "push.rrd")[("robot-view", "push.zarr/episode-0")]
    steps = ZarrEpisodeStore.open(store).episode_bounds(0)[1]
    for path in ("/observation/images/top", "/observation/images/front", "/observation/state/pusher_x", "/observation/state/block_y", "/action/dx/applied", "/reward/total", "/flags/success"):
        assert ents[path]["rows"] == steps, path
    assert "/action/dx/commanded" not in ents  # record stores only the applied action


def test_importing_the_logger_does_not_import_rerun():
    code = "import sys, robot.viewer, workflow.view; assert 'rerun' not in sys.modules, 'rerun imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).returncode == 0


def test_open_recording_needs_a_destination(tmp_path):
    with pytest.raises(ValueError, match="save=PATH.rrd, spawn=True"):
        open_recording("robot-view")
    with pytest.raises(ValueError, match="exclude each other"):
        view_store(_store(tmp_path / "demo.zarr"), episode=0, all=True, save=tmp_path / "x.rrd")


def test_metrics_rows_with_text_values_are_skipped(tmp_path):
    from robot.viewer import log_metrics

    rec = open_recording("robot-train", save=tmp_path / "m.rrd", recording_id="m")
    logged = log_metrics(rec, [{"step": 0, "time": 1.0, "losses/q": 1.0, "note": "warmup"}, {"step": 1, "time": 2.0, "losses/q": float("nan")}])
    rec.flush()
    rec.disconnect()
    assert logged == ["losses/q"]
    assert read_rrd(tmp_path / "m.rrd")[("robot-train", "m")]["/train/losses/q"]["rows"] == 2


def test_pipeline_view_holds_curves_and_evaluation_episodes_of_each_stage(tmp_path):
    from robot.metrics import JsonlMetrics
    from workflow.pipeline import write_view

    with JsonlMetrics(tmp_path / "imitation" / "metrics.jsonl") as sink:
        for step in range(1, 6):
            sink.log({"losses/denoise": 1.0 / step}, step)
    _store(tmp_path / "imitation.eval.zarr")
    path = write_view(tmp_path, ["imitation", "offline"], episodes_per_stage=2)
    recordings = read_rrd(path)
    assert set(recordings) == {("robot-pipeline", "imitation/curves"), ("robot-pipeline", "imitation/episode-0"), ("robot-pipeline", "imitation/episode-1")}
    curves = recordings[("robot-pipeline", "imitation/curves")]
    assert curves["/train/losses/denoise"]["rows"] == 5
    episode = recordings[("robot-pipeline", "imitation/episode-0")]
    assert episode["/reward/total"]["rows"] == LENGTHS[0]
    assert any(e.startswith("/action/") and v["rows"] == LENGTHS[0] for e, v in episode.items())


def test_eval_rrd_logs_steps_chunk_starts_and_the_denoising_chain(tmp_path):
    from tests.test_imitation import TINY, record_demos
    from workflow.evaluate import evaluate_policy
    from workflow.imitation import ImitationConfig, train_imitation

    demos = record_demos(tmp_path / "push.zarr", 3)
    train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=2, batch_size=8, eval_every=2, checkpoint_every=2), show_progress=False)
    from policies.critics import CriticConfig, IqlCritics
    from workflow.critic_checkpoint import save_critics
    from workflow.policy import DiffusionController

    cond_dim = DiffusionController.load(tmp_path / "il").model.cond_dim
    critic_cfg = CriticConfig(hidden_dims=(16,))
    critics = IqlCritics(cond_dim, TINY.n_action_steps * 2, config=critic_cfg)
    save_critics(tmp_path / "critics", critics)
    report = evaluate_policy(tmp_path / "il", "push", episodes=1, rrd=tmp_path / "eval.rrd", critics=tmp_path / "critics", show_progress=False)
    (entities,) = read_rrd(tmp_path / "eval.rrd").values()
    steps = int(report.mean_length)
    chunks = -(-steps // TINY.n_action_steps)
    assert entities["/reward/total"]["rows"] == steps
    assert entities["/policy/chunk_start"]["rows"] == chunks
    chain_rows = sum(v["rows"] for e, v in entities.items() if e.startswith("/policy/denoising/"))
    assert chain_rows == chunks * 2  # one line-strip batch per executed chunk for each of the 2 action dims
    assert entities["/policy/q/q1"]["rows"] == entities["/policy/q/q2"]["rows"] == entities["/policy/v/v"]["rows"] == chunks


def test_deploy_rrd_logs_every_step_its_reward_and_each_chunk(tmp_path):
    from tests.test_imitation import TINY, record_demos
    from workflow.deploy import DeployConfig, deploy
    from workflow.imitation import ImitationConfig, train_imitation

    demos = record_demos(tmp_path / "push.zarr", 3)
    train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=2, batch_size=8, eval_every=2, checkpoint_every=2), show_progress=False)
    report = deploy(DeployConfig(policy=tmp_path / "il", episodes=1, hz=0, max_steps=9, out=tmp_path / "d.zarr", rrd=tmp_path / "deploy.rrd"))
    (entities,) = read_rrd(tmp_path / "deploy.rrd").values()
    steps = report.episodes[0].length
    assert entities["/reward/total"]["rows"] == steps == 9
    assert entities["/policy/chunk_start"]["rows"] == -(-steps // TINY.n_action_steps)
    assert sum(v["rows"] for e, v in entities.items() if e.startswith("/policy/denoising/")) == 2 * -(-steps // TINY.n_action_steps)
