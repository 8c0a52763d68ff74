"""The imitation stage: trains, checkpoints, resumes after a kill, and its policy runs on matching robots only."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hardware.registry import make_sim
from policies.denoisers import DenoiserConfig
from policies.diffusion import DiffusionPolicyConfig
from policies.encoders import EncoderConfig
from robot.cli import app
from robot.metrics import read_metrics
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta
from workflow.imitation import ImitationConfig, train_imitation
from workflow.paired import wins_losses
from workflow.policy import DiffusionController
from workflow.rollout import episode_features, evaluate, run_episode

ROOT = Path(__file__).resolve().parents[1]
TINY = DiffusionPolicyConfig.action_chunk(
    horizon=4,
    n_action_steps=2,
    encoder=EncoderConfig(state_hidden_dim=32, state_feature_dim=16, image_channels=(8, 16), image_keypoints=8, image_feature_dim=16),
    denoiser=DenoiserConfig(kind="unet", unet_down_dims=(16, 32)),
)


class ExpertPolicy:
    """The scene's scripted expert behind the Policy contract."""

    def __init__(self, scene, noise=0.0, seed=0):
        self.expert = scene.expert(noise=noise, seed=seed)

    def reset(self):
        self.expert.reset()

    def select_action(self, obs):
        return self.expert.act(obs)


def record_demos(path: Path, episodes: int, **scene_opts) -> Path:
    robot, task = make_sim("push", **scene_opts)
    with robot:
        store = ZarrEpisodeStore.create(path, episode_features(robot))
        for seed in range(episodes):
            res = run_episode(robot, task, ExpertPolicy(task.scene, seed=seed), seed=seed)
            store.append_episode(res.frames, EpisodeMeta(task="push", robot=robot.name, fps=task.fps, success=res.success, seed=seed))
        store.close()
    return path


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    return record_demos(tmp_path_factory.mktemp("demos") / "push.zarr", 6)


def test_trains_saves_and_evaluates(demos, tmp_path):
    cfg = ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=40, batch_size=16, eval_every=20, checkpoint_every=20, val_fraction=0.2)
    report = train_imitation(cfg, show_progress=False)
    assert report.steps == 40 and report.episodes_val == 1 and report.episodes_train == 5
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert sum("losses/denoise_val" in r for r in rows) == 2
    assert [s for s, _ in __import__("workflow.run", fromlist=["RunDir"]).RunDir(cfg.out, cfg).snapshots()] == [20, 40]
    controller = DiffusionController.load(tmp_path / "run")
    robot, task = make_sim("push")
    with robot:
        result = evaluate(robot, task, controller, episodes=2, seed=100)
    assert result.episodes == 2 and result.inference_ms_mean is not None
    first = controller.predict_chunk()
    assert first.shape == (4, 2) and np.all(np.isfinite(first))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm-mean"])
def test_deterministic_sampling_is_reproducible(demos, tmp_path, sampler):
    cfg = ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=5, batch_size=8, eval_every=5, checkpoint_every=5)
    train_imitation(cfg, show_progress=False)
    robot, task = make_sim("push")
    actions = []
    with robot:
        for _ in range(2):
            controller = DiffusionController.load(tmp_path / "run", sampler=sampler, seed=3)
            res = run_episode(robot, task, controller, seed=7, max_steps=6)
            actions.append(res.frames["action"])
    np.testing.assert_array_equal(actions[0], actions[1])
    result = CliRunner().invoke(app, ["eval", "--policy", str(tmp_path / "run"), "--task", "push", "--episodes", "1", "--sampler", sampler])
    assert result.exit_code == 0 and "success" in result.output, result.output


def test_a_policy_deploys_with_its_own_deterministic_sampler(demos, tmp_path):
    """Trained with ``--sampler ddpm-mean``, a policy evaluates with it unless told otherwise;
    ``--sampler ddim`` still overrides it, and a checkpoint from before the option loads as ddim."""
    result = CliRunner().invoke(app, ["train", "imitation", "--data", str(demos), "--out", str(tmp_path / "run"), "--steps", "5", "--sampler", "ddpm-mean"])
    assert result.exit_code == 0, result.output
    assert DiffusionController.load(tmp_path / "run").sampler == "ddpm-mean"
    assert DiffusionController.load(tmp_path / "run", sampler="ddim").sampler == "ddim"
    for override, ran in ((None, "ddpm-mean"), ("ddim", "ddim")):  # the eval table names the sampler it ran
        args = ["eval", "--policy", str(tmp_path / "run"), "--task", "push", "--episodes", "1"] + (["--sampler", override] if override else [])
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0 and result.output.strip().splitlines()[-1].split()[:2] == ["push", ran], result.output
    ckpt = json.loads((tmp_path / "run" / "policy" / "checkpoint.json").read_text())
    del ckpt["config"]["policy"]["deterministic_sampler"]  # as written before the option existed
    (tmp_path / "run" / "policy" / "checkpoint.json").write_text(json.dumps(ckpt))
    assert DiffusionController.load(tmp_path / "run").sampler == "ddim"


def test_the_stochastic_chain_deploys_and_samplers_compare_on_the_same_seeds(demos, tmp_path):
    """``ddpm`` runs the stochastic chain: reproducible for one controller seed, different for another. Several
    samplers in ``robot eval --sampler`` run on the same seeds and print one paired row each; an unknown name is
    one line before anything runs."""
    train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=5, batch_size=8), show_progress=False)
    robot, task = make_sim("push")
    actions = []
    with robot:
        for seed in (3, 3, 4):
            controller = DiffusionController.load(tmp_path / "run", sampler="ddpm", seed=seed)
            assert controller.sampler == "ddpm" and not controller.deterministic
            actions.append(run_episode(robot, task, controller, seed=7, max_steps=6).frames["action"])
    np.testing.assert_array_equal(actions[0], actions[1])
    assert not np.array_equal(actions[0], actions[2])
    result = CliRunner().invoke(app, ["eval", "--policy", str(tmp_path / "run"), "--task", "push", "--episodes", "2", "--sampler", "ddpm-mean,ddim,ddpm"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "every sampler on the same seeds" in lines[-6] and "vs ddpm-mean (same seeds)" in lines[-5]
    assert [line.split()[0] for line in lines[-3:]] == ["ddpm-mean", "ddim", "ddpm"] and "won" in lines[-1] and "lost" in lines[-1]
    result = CliRunner().invoke(app, ["eval", "--policy", str(tmp_path / "run"), "--episodes", "2", "--sampler", "ddim,bogus"])
    assert result.exit_code != 0 and result.output.strip().splitlines() == ["error: unknown sampler 'bogus'; known: ddim, ddpm-mean, ddpm, consistency"]


def test_eval_writes_per_seed_outcomes_and_compares_against_another_policy_s(demos, tmp_path):
    """``robot eval --outcomes`` keeps every episode's outcome; ``--against`` prints the paired comparison on the
    same seeds, and refuses a file for other seeds or one that holds no outcomes, in one line, before running."""
    from workflow.paired import SeedOutcomes

    train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=5, batch_size=8), show_progress=False)
    base = ["eval", "--policy", str(tmp_path / "run"), "--task", "push", "--episodes", "3", "--seed", "40"]
    result = CliRunner().invoke(app, [*base, "--sampler", "ddpm", "--outcomes", str(tmp_path / "ddpm.json")])
    assert result.exit_code == 0, result.output
    ddpm = SeedOutcomes.read(tmp_path / "ddpm.json")
    assert ddpm.seeds == (40, 41, 42) and len(ddpm.successes) == len(ddpm.lengths) == 3 and ddpm.sampler == "ddpm"
    result = CliRunner().invoke(app, [*base, "--sampler", "ddim", "--outcomes", str(tmp_path / "ddim.json"), "--against", str(tmp_path / "ddpm.json")])
    assert result.exit_code == 0, result.output
    ddim = SeedOutcomes.read(tmp_path / "ddim.json")
    wins, losses = wins_losses(ddpm.successes, ddim.successes)
    assert "3 paired episodes, seeds 40-42" in result.output and f"{wins} won, {losses} lost" in result.output, result.output
    for args, says in ((["--seed", "41"], "ran on seeds 40-42 (3); pass --seed 40 --episodes 3"), ([], "holds no per-seed outcomes")):
        against = tmp_path / ("ddpm.json" if args else "bogus.json")
        if not args:
            against.write_text('{"policy": "x"}')
        result = CliRunner().invoke(app, [*base, *args, "--against", str(against)])
        assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: ") and says in result.output, result.output
        assert "success" not in result.output  # refused before any episode ran


def test_resumes_after_kill(demos, tmp_path):
    out = tmp_path / "run"
    script = (
        "import sys; from tests.test_imitation import TINY; from workflow.imitation import ImitationConfig, train_imitation;"
        f"train_imitation(ImitationConfig(data={str(demos)!r}, out={str(out)!r}, policy=TINY, steps=400, batch_size=8, eval_every=50, checkpoint_every=10), show_progress=False)"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    state = out / "checkpoints" / "state" / "checkpoint.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (state.is_file() and json.loads(state.read_text())["extra"]["step"] >= 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["extra"]["step"]
    assert 20 <= killed_at < 400
    cfg = ImitationConfig(data=str(demos), out=str(out), policy=TINY, steps=400, batch_size=8, eval_every=50, checkpoint_every=10)
    report = train_imitation(cfg, show_progress=False)
    assert report.steps == 400
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps[-1] == 400 and killed_at + 1 in steps  # continued after the saved state, not from zero
    assert steps.count(1) == 1


def test_other_options_on_an_existing_run_are_refused(demos, tmp_path):
    cfg = ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=2, batch_size=8, eval_every=2, checkpoint_every=2)
    train_imitation(cfg, show_progress=False)
    with pytest.raises(ValueError, match="another config .*steps"):
        train_imitation(ImitationConfig(**{**cfg.__dict__, "steps": 3}), show_progress=False)


def test_a_run_saved_before_a_config_field_was_added_still_resumes(tmp_path):
    from workflow.run import RunDir

    cfg = ImitationConfig(data="d.zarr", out=str(tmp_path / "run"), policy=TINY)
    RunDir(cfg.out, cfg).close()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["policy"]["log_prob_reduction"]  # as written by a version without that field
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    RunDir(cfg.out, cfg).close()  # the missing field takes its default: the same config
    saved["policy"]["horizon"] += 1
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="another config .*policy"):
        RunDir(cfg.out, cfg)


def test_policy_refuses_a_robot_without_its_camera(tmp_path):
    demos = record_demos(tmp_path / "rgb.zarr", 3, cameras=("top",), image_size=32)
    cfg = ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=2, batch_size=4, eval_every=2, checkpoint_every=2)
    train_imitation(cfg, show_progress=False)
    controller = DiffusionController.load(tmp_path / "run")
    assert "observation.images.top" in controller.input_features
    robot, _ = make_sim("push")  # no camera
    with pytest.raises(ValueError, match="observation.images.top \\(uint8 32x32x3\\) is missing") as err:
        controller.check_robot(robot.name, robot.observation_features, robot.action_features)
    assert "provides observation.state" in str(err.value)


def tiny_push_policy(root: Path, demos: int = 4, steps: int = 30) -> Path:
    """A tiny push policy (``root/run``) trained for ``steps`` on ``demos`` scripted demonstrations (``root/push.zarr``)."""
    path = record_demos(root / "push.zarr", demos)
    train_imitation(ImitationConfig(data=str(path), out=str(root / "run"), policy=TINY, steps=steps, batch_size=16, eval_every=steps, checkpoint_every=steps), show_progress=False)
    return root / "run"


@pytest.mark.parametrize("rollout_steps", ["interventions", "episodes"])
def test_imitation_from_intervention_windows_learns_the_operator_s_steps_and_never_the_policy_s(demos, tmp_path, monkeypatch, rollout_steps):
    """HIL-SERL's demonstration buffer: with ``rollout_steps="interventions"`` a rollout teaches only the steps
    its operator drove, as windows whose action targets stop where the operator handed back."""
    import shutil
    from dataclasses import replace

    import workflow.imitation as imitation
    from robot.types import ACTION, INTERVENTION

    POLICY, OPERATOR = 0.77, -0.66  # marker actions of the policy's and the operator's steps in the rollouts
    data = Path(shutil.copytree(demos, tmp_path / "merged.zarr"))
    with ZarrEpisodeStore.open(data, mode="a") as store:
        for i in (0, 1):  # two successful rollouts, each with an operator's run of 7 steps in the middle
            frames = dict(store.episode(i).data)
            flags = np.zeros(len(frames[ACTION]), dtype=bool)
            flags[10:17] = True
            frames[ACTION] = np.where(flags[:, None], OPERATOR, POLICY).astype(frames[ACTION].dtype) * np.ones_like(frames[ACTION])
            frames[INTERVENTION] = flags
            store.append_episode(frames, replace(store.metas[i], source="offline-rollout"))
    seen = []

    class Recording(imitation.WindowSampler):
        def sample(self, batch_size, rng):
            batch = super().sample(batch_size, rng)
            seen.append(batch[ACTION])
            return batch

    monkeypatch.setattr(imitation, "WindowSampler", Recording)
    report = train_imitation(ImitationConfig(data=str(data), out=str(tmp_path / "il"), policy=TINY, steps=40, batch_size=32, eval_every=40,
                                             checkpoint_every=40, rollout_steps=rollout_steps), show_progress=False)  # fmt: skip
    targets = np.concatenate(seen)  # (N, horizon, Da) every action target drawn
    operator_windows = np.all(targets == np.float32(OPERATOR), axis=(1, 2)).sum()
    if rollout_steps == "interventions":
        assert report.intervention_steps == 14
        assert not np.any(targets == np.float32(POLICY))  # no policy step, not even as a target after the hand-back
        assert operator_windows > 0  # the operator's steps are trained on
    else:
        assert report.intervention_steps == 0 and np.any(targets == np.float32(POLICY))  # whole rollouts, the policy's steps too
