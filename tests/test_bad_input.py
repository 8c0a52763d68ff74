"""A catalogue of damaged stores and checkpoints swept over every command that reads them: each answer is one
`error:` line naming the file, exit code 2, no traceback, and nothing written where a result would go."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robot.checkpoint import MANIFEST, _sha256
from robot.cli import app
from workflow.imitation import ImitationConfig, train_imitation

from tests.test_imitation import TINY, record_demos
from tests.test_nonfinite import poison


def _lose_chunk(store: Path) -> None:
    shutil.rmtree(store / "data" / "action" / "c" / "0")


def _damage_chunk(store: Path) -> None:
    chunk = store / "data" / "observation.state" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[20:40] = b"\xff" * 20
    chunk.write_bytes(bytes(data))


def _edit_root(store: Path, edit) -> None:
    root = json.loads((store / "zarr.json").read_text())
    edit(root["attributes"])
    (store / "zarr.json").write_text(json.dumps(root))


def _bad_block(store: Path) -> None:
    (store / "episodes" / "000000.json").write_text(json.dumps([{"task": "push"}] * 10))


def _half_created(store: Path) -> None:
    shutil.rmtree(store)
    import zarr

    zarr.open_group(str(store), mode="w").create_array("data/action", shape=(0, 2), chunks=(16, 2), dtype="float32")


STORES = {
    "lost chunk": (_lose_chunk, "data/action has lost 1 chunk file"),
    "damaged chunk": (_damage_chunk, "do not decode"),
    "NaN frame": (lambda s: poison(s, 1), "NaN or inf"),
    "no features in the commit record": (lambda s: _edit_root(s, lambda a: a.pop("features")), "commit record in zarr.json is damaged"),
    "episode count past the metadata": (lambda s: _edit_root(s, lambda a: a.update(num_episodes=99)), "episodes/000000.json holds"),
    "malformed episode metadata": (_bad_block, "episodes/000000.json"),
    "half-created store": (_half_created, "creation was interrupted"),
    "future format": (lambda s: _edit_root(s, lambda a: a.update(format_version=7)), "newer than this kit reads"),
    "episode ends past the data": (lambda s: _truncate(s, "reward"), "data/reward holds"),
}


def _truncate(store: Path, key: str) -> None:
    meta = store / "data" / key / "zarr.json"
    array = json.loads(meta.read_text())
    array["shape"][0] = 3
    meta.write_text(json.dumps(array))


def _nan_tensor(ckpt: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(ckpt / "tensors.safetensors"))
    name = next(k for k, v in tensors.items() if k.startswith("policy/") and v.is_floating_point())
    tensors[name] = tensors[name] * float("nan")
    save_file(tensors, str(ckpt / "tensors.safetensors"))
    _edit_manifest(ckpt, lambda m: {**m, "sha256": _sha256(ckpt / "tensors.safetensors")})


def _edit_manifest(ckpt: Path, edit) -> None:
    (ckpt / MANIFEST).write_text(json.dumps(edit(json.loads((ckpt / MANIFEST).read_text()))))


CHECKPOINTS = {
    "manifest holding []": (lambda c: (c / MANIFEST).write_text("[]"), "holds a JSON list, expected an object"),
    "manifest not JSON": (lambda c: (c / MANIFEST).write_text("{ half"), "is corrupt"),
    "NaN weights": (_nan_tensor, "holds NaN or inf"),
    "unknown normaliser mode": (lambda c: _edit_manifest(c, lambda m: {**m, "normalizer": {**m["normalizer"], "action": "minmax"}}), "normaliser mode for action"),
    "truncated tensors": (lambda c: (c / "tensors.safetensors").write_bytes((c / "tensors.safetensors").read_bytes()[:100]), "does not match its checksum"),
    "another kind": (lambda c: _edit_manifest(c, lambda m: {**m, "kind": "iql-critics"}), "expected a 'diffusion-policy'"),
    "config of another shape": (lambda c: _edit_manifest(c, lambda m: {**m, "config": {"policy": []}}), "policy: expected a JSON object, got list"),
    "config without its policy": (lambda c: _edit_manifest(c, lambda m: {**m, "config": {}}), "no 'policy' entry"),
    "config field of the wrong type": (lambda c: _edit_manifest(c, lambda m: {**m, "config": {"policy": {**m["config"]["policy"], "horizon": "e"}}}),
                                       "horizon: expected an integer, got \"e\""),
    "nested config of the wrong type": (lambda c: _edit_manifest(c, lambda m: {**m, "config": {"policy": {**m["config"]["policy"], "encoder": 3}}}),
                                        "encoder: expected a JSON object, got 3"),
    "feature shape not integers": (lambda c: _edit_manifest(c, lambda m: {**m, "features": {**m["features"], "input": {
        k: {**f, "shape": ["e"]} for k, f in m["features"]["input"].items()}}}), "shape[0]: expected an integer, got \"e\""),
}


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad-input")
    demos = record_demos(root / "push.zarr", 4)
    cfg = ImitationConfig(data=str(demos), out=str(root / "run"), policy=TINY, steps=4, batch_size=8, eval_every=4, checkpoint_every=4)
    train_imitation(cfg, show_progress=False)
    return demos, root / "run" / "policy"


def _one_line_exit_2(args: list[str], expected: str, written: Path | None = None) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (args, result.exit_code, result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) >= 1 and expected in errors[0], (args, result.output)
    assert "Traceback" not in result.output, result.output
    if written is not None:
        assert not (written / "policy").exists(), f"{args} wrote a policy from bad input"


@pytest.mark.parametrize("case", list(STORES))
def test_every_command_that_reads_a_store_answers_a_damaged_one_with_one_line(case, sound, tmp_path) -> None:
    demos, policy = sound
    damage, expected = STORES[case]
    store = tmp_path / "bad.zarr"
    shutil.copytree(demos, store)
    damage(store)
    opens = case in ("no features in the commit record", "episode count past the metadata", "malformed episode metadata", "half-created store", "future format",
                     "episode ends past the data")
    commands = [
        (["info", str(store), "--check"], None),
        (["convert", str(store), str(tmp_path / "out-lerobot"), "--to", "lerobot"], None),
        (["train", "imitation", "--data", str(store), "--out", str(tmp_path / "il"), "--steps", "2"], tmp_path / "il"),
        (["train", "distill", "--policy", str(policy), "--data", str(store), "--out", str(tmp_path / "d"), "--steps", "2"], tmp_path / "d"),
        (["view", str(store), "--all", "--save", str(tmp_path / "v.rrd")], None),
    ]
    if opens:
        commands.append((["info", str(store)], None))
    for args, written in commands:
        if case == "NaN frame" and args[0] in ("view", "convert"):
            continue  # NaN frames are data to look at or to carry over, not an error there
        _one_line_exit_2(args, expected, written)


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_every_command_that_loads_a_policy_answers_a_damaged_one_with_one_line(case, sound, tmp_path) -> None:
    demos, policy = sound
    damage, expected = CHECKPOINTS[case]
    bad = tmp_path / "policy"
    shutil.copytree(policy, bad)
    damage(bad)
    for args, written in [
        (["eval", "--policy", str(bad), "--episodes", "1"], None),
        (["deploy", "--policy", str(bad), "--episodes", "1", "--out", str(tmp_path / "deploy.zarr")], None),
        (["train", "distill", "--policy", str(bad), "--data", str(demos), "--out", str(tmp_path / "d"), "--steps", "2"], tmp_path / "d"),
        (["train", "online", "--policy", str(bad), "--out", str(tmp_path / "on"), "--iterations", "1", "--episodes-per-iteration", "1"], tmp_path / "on"),
        (["train", "offline", "--policy", str(bad), "--data", str(demos), "--out", str(tmp_path / "off"), "--rounds", "1"], tmp_path / "off"),
    ]:
        _one_line_exit_2(args, expected, written)
    assert not (tmp_path / "deploy.zarr").exists() or not any((tmp_path / "deploy.zarr").iterdir())


def test_distilling_a_policy_on_a_store_recorded_for_another_robot_is_one_line(sound, tmp_path) -> None:
    _, policy = sound
    from hardware.registry import make_sim
    from robot.store import ZarrEpisodeStore
    from robot.types import EpisodeMeta
    from tests.test_imitation import ExpertPolicy
    from workflow.rollout import episode_features, run_episode

    robot, task = make_sim("lift")
    with robot:
        store = ZarrEpisodeStore.create(tmp_path / "lift.zarr", episode_features(robot))
        res = run_episode(robot, task, ExpertPolicy(task.scene, seed=0), seed=0, max_steps=5)
        store.append_episode(res.frames, EpisodeMeta(task="lift", robot=robot.name, fps=task.fps, success=res.success, seed=0))
        store.close()
    _one_line_exit_2(["train", "distill", "--policy", str(policy), "--data", str(tmp_path / "lift.zarr"), "--out", str(tmp_path / "d")],
                     "lift.zarr was not recorded for this policy: observation.state is", tmp_path / "d")  # fmt: skip


@pytest.mark.parametrize("content, expected", [("[]", "holds a JSON list, expected an object"), ('"e"', "holds a JSON str"), ("{ half", "is not valid JSON")])
def test_a_run_directory_with_a_malformed_config_is_one_line(content, expected, sound, tmp_path) -> None:
    demos, _ = sound
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(content)
    _one_line_exit_2(["train", "imitation", "--data", str(demos), "--out", str(run), "--steps", "2"], expected, run)
    _one_line_exit_2(["diagnose", str(run)], expected)
    assert (run / "config.json").read_text() == content  # the user's file is left as it was


def test_eval_runs_the_task_the_checkpoint_names_and_says_so_when_it_names_none(sound, tmp_path) -> None:
    _, policy = sound
    result = CliRunner().invoke(app, ["eval", "--policy", str(policy), "--episodes", "1"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].split()[0] == "push", result.output
    nameless = tmp_path / "policy"
    shutil.copytree(policy, nameless)
    _edit_manifest(nameless, lambda m: {**m, "extra": {k: v for k, v in m["extra"].items() if k != "task"}})
    _one_line_exit_2(["eval", "--policy", str(nameless), "--episodes", "1"], "the checkpoint names no task; pass --task")
    assert CliRunner().invoke(app, ["eval", "--policy", str(nameless), "--episodes", "1", "--task", "push"]).exit_code == 0
