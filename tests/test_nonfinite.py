"""Non-finite data, losses, weights and actions: refused or contained with one clear line, never trained or deployed silently."""

from __future__ import annotations

import dataclasses

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from robot.checkpoint import MANIFEST, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from robot.cli import app
from robot.normalize import Normalizer
from robot.store import ZarrEpisodeStore, nonfinite_episodes
from workflow.control import NONFINITE_PATIENCE
from workflow.deploy import DeployConfig, deploy
from workflow.imitation import ImitationConfig, train_imitation
from workflow.policy import DiffusionController

from tests.test_imitation import TINY, record_demos


def poison(store_path: Path, episode: int, key: str = "observation.state") -> None:
    """Write a NaN into one frame of ``episode`` behind the store's back (the store refuses NaN on append)."""
    import zarr

    with ZarrEpisodeStore.open(store_path) as store:
        start, _ = store.episode_bounds(episode)
    array = zarr.open_group(str(store_path), mode="r+")[f"data/{key}"]
    row = np.asarray(array[start + 1])
    row[0] = np.nan
    array[start + 1] = row


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    return record_demos(tmp_path_factory.mktemp("nonfinite") / "push.zarr", 5)


@pytest.fixture(scope="module")
def policy(tmp_path_factory, demos: Path) -> Path:
    out = tmp_path_factory.mktemp("nonfinite-policy") / "run"
    train_imitation(ImitationConfig(data=str(demos), out=str(out), policy=TINY, steps=10, batch_size=8, eval_every=10, checkpoint_every=10), show_progress=False)
    return out / "policy"


def test_nonfinite_episodes_names_each_episode_and_key() -> None:
    data = {"a": np.zeros((10, 2), np.float32), "b": np.zeros(10, np.int64)}
    data["a"][3, 1] = np.nan
    data["a"][9, 0] = np.inf
    assert nonfinite_episodes(data, np.array([4, 7, 10])) == {0: ["a"], 2: ["a"]}
    assert nonfinite_episodes({"a": np.zeros((3, 1), np.float32)}, np.array([3])) == {}


def test_imitation_refuses_a_store_with_nan_frames_naming_the_episode_and_drops_it_when_asked(demos: Path, tmp_path: Path, capsys) -> None:
    store = tmp_path / "bad.zarr"
    shutil.copytree(demos, store)
    poison(store, 2)
    with pytest.raises(ValueError, match=r"bad.zarr: 1 episode\(s\) hold NaN or inf: 2 \(observation.state\); .*--drop-nonfinite"):
        train_imitation(ImitationConfig(data=str(store), out=str(tmp_path / "refused"), policy=TINY, steps=2, batch_size=4), show_progress=False)
    assert not (tmp_path / "refused" / "policy").exists()
    report = train_imitation(ImitationConfig(data=str(store), out=str(tmp_path / "dropped"), policy=TINY, steps=2, batch_size=4, eval_every=2,
                                             drop_nonfinite=True), show_progress=False)  # fmt: skip
    assert "left out 1 episode(s) holding NaN or inf: 2 (observation.state)" in capsys.readouterr().err
    assert report.episodes_train + report.episodes_val == 4
    load_checkpoint(report.policy)  # finite, loads


def test_the_cli_turns_nan_data_into_one_line_and_exit_2(demos: Path, tmp_path: Path) -> None:
    store = tmp_path / "bad.zarr"
    shutil.copytree(demos, store)
    poison(store, 0, "action")
    result = CliRunner().invoke(app, ["train", "imitation", "--data", str(store), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert result.exit_code == 2, result.output
    assert "episode(s) hold NaN or inf: 0 (action)" in result.output and "Traceback" not in result.output


def test_training_stops_at_the_first_nonfinite_loss_without_writing_a_policy(demos: Path, tmp_path: Path, monkeypatch) -> None:
    from policies.diffusion import DiffusionPolicy

    real = DiffusionPolicy.compute_loss
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):
        calls["n"] += 1
        loss = real(self, *args, **kwargs)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(DiffusionPolicy, "compute_loss", diverging)
    with pytest.raises(ValueError, match="imitation: the loss became nan at step 3; stopped without writing a policy"):
        train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "run"), policy=TINY, steps=20, batch_size=4), show_progress=False)
    assert not (tmp_path / "run" / "policy").exists()


def test_a_checkpoint_with_nonfinite_weights_is_neither_written_nor_loaded(policy: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"refusing to write net/w: it holds NaN or inf"):
        save_checkpoint(tmp_path / "nan", Checkpoint(kind="x", config={}, modules={"net": {"w": torch.tensor([1.0, float("nan")])}}))
    assert not (tmp_path / "nan").exists()
    # the same file tampered with after writing: refused on load, naming the tensor
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(policy, bad)
    tensors = load_file(str(bad / "tensors.safetensors"))
    name = next(k for k, v in tensors.items() if k.startswith("policy/") and v.is_floating_point())
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, str(bad / "tensors.safetensors"))
    manifest = json.loads((bad / MANIFEST).read_text())
    from robot.checkpoint import _sha256

    manifest["sha256"] = _sha256(bad / "tensors.safetensors")
    (bad / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=f"{name} holds NaN or inf"):
        load_checkpoint(bad)


def test_a_malformed_manifest_or_normaliser_is_refused_at_load_naming_the_field(policy: Path, tmp_path: Path) -> None:
    def variant(name: str, edit) -> Path:
        path = tmp_path / name
        shutil.copytree(policy, path)
        manifest = json.loads((path / MANIFEST).read_text())
        (path / MANIFEST).write_text(json.dumps(edit(manifest)))
        return path

    with pytest.raises(CheckpointError, match="holds a JSON list, expected an object"):
        load_checkpoint(variant("list", lambda m: []))
    with pytest.raises(CheckpointError, match="field 'config' is array, expected a JSON object"):
        load_checkpoint(variant("config", lambda m: {**m, "config": []}))
    with pytest.raises(CheckpointError, match="normaliser mode for action is 'minmax'"):
        load_checkpoint(variant("mode", lambda m: {**m, "normalizer": {**m["normalizer"], "action": "minmax"}}))
    shape = variant("shape", lambda m: m)
    features = json.loads((shape / MANIFEST).read_text())
    features["features"]["action"]["action"] = {"shape": [5], "dtype": "float32"}
    (shape / MANIFEST).write_text(json.dumps(features))
    with pytest.raises(CheckpointError, match=r"normaliser statistics for action have shape \(2,\), the feature is \(5,\)"):
        load_checkpoint(shape)


def test_eval_and_deploy_answer_a_malformed_checkpoint_with_one_line(policy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(policy, bad)
    (bad / MANIFEST).write_text("[]")
    for args in (["eval", "--policy", str(bad), "--episodes", "1"], ["deploy", "--policy", str(bad), "--episodes", "1", "--out", str(tmp_path / "d.zarr")]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "holds a JSON list, expected an object" in result.output and "Traceback" not in result.output


def test_normaliser_statistics_are_checked_when_read() -> None:
    arrays = {"x.offset": np.zeros(2, np.float32), "x.scale": np.array([1.0, np.nan], np.float32)}
    with pytest.raises(ValueError, match="for x hold NaN, inf or a zero scale"):
        Normalizer.from_tensors(arrays, {"x": "limits"})
    with pytest.raises(ValueError, match="disagree"):
        Normalizer.from_tensors({"x.offset": np.zeros(2, np.float32), "x.scale": np.ones(3, np.float32)}, {"x": "limits"})


def test_deploy_holds_nonfinite_actions_as_interventions_and_ends_an_episode_of_nothing_else(policy: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    real = DiffusionController.plan

    def nan_plan(self, frames):
        planned = real(self, frames)
        return dataclasses.replace(planned, actions=np.full_like(planned.actions, np.nan))

    monkeypatch.setattr(DiffusionController, "plan", nan_plan)
    report = deploy(DeployConfig(policy=policy, episodes=2, hz=0, max_steps=40, out=tmp_path / "d.zarr"))
    assert [e.label for e in report.episodes] == ["non-finite actions"] * 2
    assert all(e.interventions == NONFINITE_PATIENCE and not e.success for e in report.episodes)
    assert report.safety["nonfinite"] == 2 * NONFINITE_PATIENCE
    assert "the policy's last 10 actions were NaN or inf" in capsys.readouterr().err
    with ZarrEpisodeStore.open(tmp_path / "d.zarr") as store:  # what was held is recorded, finite, and flagged
        ep = store.episode(0).data
        assert np.isfinite(ep["action"]).all() and ep["intervention"].all()
