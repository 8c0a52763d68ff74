"""A task's own safety config, overridden field by field (``--safety-*``), reaches sim robots and vendor stand-ins."""

from __future__ import annotations

import dataclasses

import pytest
import typer
from typer.testing import CliRunner

from hardware.registry import make_sim, open_robot, safety_overrides, with_overrides
from robot.cli import app
from robot.types import SafetyConfig
from sim import registry
from sim.push import make_push

OWN = SafetyConfig(joint_margin=0.05, velocity_scale=0.8, workspace_approach=0.4)
"""The safety config of the test's task ``careful-push``."""


def careful_push(camera=None, **options):
    """Push, bringing its own safety config as a task may (``SimScene.safety``)."""
    scene = make_push(camera=camera, **options)
    scene.safety = OWN
    return scene


@pytest.fixture
def careful(monkeypatch):
    monkeypatch.setitem(registry._registered, "careful-push", careful_push)


def test_overrides_replace_only_the_fields_given_and_end_with_the_block() -> None:
    with safety_overrides(joint_margin=0.1):
        with safety_overrides(velocity_scale=0.5):
            assert with_overrides(OWN) == dataclasses.replace(OWN, joint_margin=0.1, velocity_scale=0.5)
        assert with_overrides(OWN) == dataclasses.replace(OWN, joint_margin=0.1)
    assert with_overrides(OWN) is OWN
    with pytest.raises(ValueError, match="no safety setting joint_marg; SafetyConfig has"):
        with safety_overrides(joint_marg=0.1):
            pass
    with safety_overrides(joint_margin=0.7), pytest.raises(ValueError, match="joint_margin is a fraction of the joint range"):
        with_overrides(OWN)


def test_a_sim_robot_gets_its_tasks_config_with_the_overrides_on_top(careful) -> None:
    robot, _ = make_sim("careful-push")
    robot.close()
    assert robot.config is OWN
    with safety_overrides(joint_margin=0.0, workspace_low=(-0.1, -0.1, -1.0), workspace_high=(0.1, 0.1, 1.0)):
        robot, _ = make_sim("careful-push")
    robot.close()
    assert robot.config == dataclasses.replace(OWN, joint_margin=0.0, workspace_low=(-0.1, -0.1, -1.0), workspace_high=(0.1, 0.1, 1.0))


@pytest.mark.parametrize("kind", ["ur5e", "franka", "xarm"])
def test_a_vendor_standin_runs_with_its_tasks_safety_config_not_the_default(careful, kind: str) -> None:
    robot, task = open_robot(f"{kind}:standin:careful-push")
    robot.close()
    assert task is not None and robot.config is OWN  # before: SafetyConfig(), whatever the task brought
    with safety_overrides(velocity_scale=0.3):
        robot, _ = open_robot(f"{kind}:standin:careful-push")
    robot.close()
    assert robot.config == dataclasses.replace(OWN, velocity_scale=0.3)


def test_a_real_arm_and_a_remote_one_take_overrides_their_own_way(monkeypatch) -> None:
    from hardware.drivers import specs

    given = []
    monkeypatch.setattr(specs, "open_real", lambda kind, vendor, host, safety, **opts: given.append(safety))  # no SDK here
    with safety_overrides(joint_margin=0.1):
        open_robot("ur5e:10.0.0.9")
        with pytest.raises(ValueError, match="configured on the server"):
            open_robot("remote:127.0.0.1:9")
    open_robot("ur5e:10.0.0.9")
    assert given == [SafetyConfig(joint_margin=0.1), SafetyConfig()]


def test_record_takes_safety_flags_and_refuses_bad_ones_in_one_line(tmp_path) -> None:
    runner = CliRunner()
    options = _options("record")
    for flag in ("--safety-joint-margin", "--safety-max-speed", "--safety-workspace-low", "--no-safety-guard-joint-limits"):
        assert flag in options, flag
    assert "joint's range" in options["--safety-joint-margin"].help  # the field's docstring
    args = ["record", "--task", "push", "--device", "scripted", "--episodes", "1"]
    free = runner.invoke(app, [*args, "--out", str(tmp_path / "free.zarr")])
    boxed = runner.invoke(app, [*args, "--out", str(tmp_path / "boxed.zarr"), "--safety-workspace-low", "-0.02,-0.02,-1",
                                "--safety-workspace-high", "0.02,0.02,1"])  # fmt: skip
    assert free.exit_code == 0 and boxed.exit_code == 0, boxed.output
    assert "workspace_clipped" not in free.output and "workspace_clipped" in boxed.output
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "bad.zarr"), "--safety-joint-margin", "0.7"])
    assert bad.exit_code == 2 and "joint_margin is a fraction" in bad.output and len(bad.output.strip().splitlines()) == 1
    unparsed = runner.invoke(app, [*args, "--out", str(tmp_path / "bad.zarr"), "--safety-max-step", "a,b"])
    assert unparsed.exit_code == 2 and "--safety-max-step: expected a comma-separated list" in unparsed.output
    assert not (tmp_path / "bad.zarr").exists()


def _options(command: str) -> dict:
    """The command's options by flag (every name of each)."""
    cmd = typer.main.get_command(app)
    for word in command.split():
        cmd = cmd.get_command(None, word)
    return {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("command", ["eval", "deploy", "pipeline", "critic-ranking", "train offline", "train online", "serve"])
def test_every_command_that_builds_a_robot_takes_the_safety_flags(command: str) -> None:
    options = _options(command)
    assert {"--safety-joint-margin", "--safety-velocity-scale", "--safety-max-speed", "--safety-workspace-high"} <= set(options)


def test_a_run_directory_records_the_overrides_it_ran_under(tmp_path) -> None:
    import json

    from workflow.run import RunDir

    config = SafetyConfig()  # any config dataclass
    RunDir(tmp_path / "plain", config)
    assert not (tmp_path / "plain" / "safety_overrides.json").exists()
    with safety_overrides(joint_margin=0.05, workspace_low=(-0.3, -0.3, 0.0)):
        RunDir(tmp_path / "careful", config)
    assert json.loads((tmp_path / "careful" / "safety_overrides.json").read_text()) == {"joint_margin": 0.05, "workspace_low": [-0.3, -0.3, 0.0]}


def test_serve_refuses_a_bad_safety_flag_in_one_line_before_it_binds_a_port() -> None:
    result = CliRunner().invoke(app, ["serve", "--robot", "sim:push", "--port", "0", "--safety-joint-margin", "-1"], env={"ROBOT_TOKEN": "x" * 32})
    assert result.exit_code != 0 and "joint_margin" in result.output and "Traceback" not in result.output
    assert "listening" not in result.output.lower()
