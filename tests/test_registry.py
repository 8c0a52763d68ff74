"""Bring your own task: register_task, an installed package's entry point, --task pkg.module:factory, `robot tasks`,
and every command defaulting to the checkpoint's task."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sim.registry as registry
from robot.cli import app
from robot.store import ZarrEpisodeStore
from sim.registry import ENTRY_POINT_GROUP, make_scene, register_task, resolve_task, task_names

TASKS_PY = '''"""A third party's task: the kit's push scene with a shorter episode."""

from sim.push import make_push


def make_task(camera=None, **options):
    options.setdefault("max_steps", 50)
    return make_push(camera=camera, **options)


NOT_A_FACTORY = 3
'''
ENTRY_POINTS = f"[{ENTRY_POINT_GROUP}]\nmy-push = mypkg.tasks:make_task\n"


@pytest.fixture
def clean_registry(monkeypatch):
    """A registry as a fresh process has it: nothing registered, entry points not yet read (restored afterwards)."""
    monkeypatch.setattr(registry, "_registered", {})
    monkeypatch.setattr(registry, "_entry_points", None)
    monkeypatch.setattr(registry, "_loaded", {})
    monkeypatch.setattr(registry, "_warned", set())


def install(root: Path, entry_points: str = ENTRY_POINTS) -> Path:
    """The ~30-line package ``my-push-pkg`` as pip would leave it: the module and its dist-info with the entry point."""
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "tasks.py").write_text(TASKS_PY)
    info = root / "my_push_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-push-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return root


@pytest.fixture
def third_party(tmp_path, monkeypatch, clean_registry):
    """``my-push-pkg`` on sys.path (importlib.metadata finds its dist-info there); forgotten after the test."""
    root = install(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    yield root
    for name in ("mypkg", "mypkg.tasks"):
        sys.modules.pop(name, None)


def _lines(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


def test_register_task_adds_a_task_to_every_lookup_and_refuses_taken_names(clean_registry):
    from sim.push import make_push

    def short_push(camera=None, **options):
        return make_push(camera=camera, **{"max_steps": 30, **options})

    register_task("short-push", short_push)
    assert "short-push" in task_names() and resolve_task("short-push").source == "registered"
    scene = make_scene("short-push")
    assert (scene.name, scene.max_steps) == ("short-push", 30)  # named as registered: episodes record the name that rebuilds it
    scene.close()
    for taken, where in (("short-push", "registered"), ("push", "built-in")):
        with pytest.raises(ValueError, match=f"task '{taken}' is already taken \\({where}\\); pick another name or pass replace=True"):
            register_task(taken, short_push)
    register_task("push", short_push, replace=True)  # a user may replace a built-in task in their process
    assert resolve_task("push").source == "registered"
    with pytest.raises(ValueError, match="not a plain name"):
        register_task("my:push", short_push)
    with pytest.raises(TypeError, match="factory must be callable"):
        register_task("other", 3)


def test_an_unknown_task_lists_the_known_ones_and_how_to_add_one(clean_registry, tmp_path):
    with pytest.raises(ValueError) as e:
        make_scene("pusht")
    message = str(e.value)
    assert message.startswith("unknown task 'pusht'; did you mean 'push'? known tasks: push, push-rim, lift, lift-ur5e, can; add one with ")
    assert all(how in message for how in ("sim.registry.register_task(name, factory)", f"{ENTRY_POINT_GROUP!r} group", "--task pkg.module:factory"))
    with pytest.raises(ValueError, match="'nowhere.at_all' is neither an importable module nor a task family"):
        resolve_task("nowhere.at_all:make")
    result = CliRunner().invoke(app, ["tasks", "pusht"])
    assert result.exit_code == 2 and result.output.count("\n") == 1 and "register_task" in result.output, result.output
    result = CliRunner().invoke(app, ["pipeline", "--task", "pusht", "--out", str(tmp_path / "p")])
    assert result.exit_code == 2 and "unknown task 'pusht'" in result.output and not any(tmp_path.iterdir())


def test_an_installed_packages_task_appears_in_robot_tasks(third_party):
    result = CliRunner().invoke(app, ["tasks"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line and line.split()[0] in (*registry.TASKS, "my-push")}
    assert set(rows) == {"push", "push-rim", "lift", "lift-ur5e", "can", "my-push"}, result.output
    assert rows["my-push"][1:] == ["pusher", "observation.state", "(8,)", "action", "(2,)", "top,front", "yes", "50", "10", "entry", "point", "my-push-pkg"]
    assert rows["push"][8:] == ["100", "10", "built-in"] and all(rows[t][-1] == "built-in" and "frontview" in rows[t][6] for t in ("lift", "lift-ur5e", "can"))
    assert "families" in result.output and "gym:<env-id>" in result.output and "metaworld:<task>" in result.output
    one = CliRunner().invoke(app, ["tasks", "my-push"])
    assert one.exit_code == 0 and "entry point my-push-pkg" in one.output and "pusher_x, pusher_y" in one.output, one.output
    assert resolve_task("my-push").source == "entry point my-push-pkg"
    with pytest.raises(ValueError, match="task 'my-push' is already taken \\(entry point my-push-pkg\\)"):
        register_task("my-push", lambda camera=None: None)


def test_a_broken_entry_point_is_one_warning_naming_its_package_and_is_skipped(tmp_path, monkeypatch, clean_registry, capsys):
    broken = ENTRY_POINTS + "gone = mypkg.missing:make\nnumber = mypkg.tasks:NOT_A_FACTORY\npush = mypkg.tasks:make_task\n"
    monkeypatch.syspath_prepend(str(install(tmp_path / "site", broken)))
    try:
        assert task_names() == ("push", "push-rim", "lift", "lift-ur5e", "can", "my-push")
        task_names()  # warned once per process, not on every listing
        warnings = capsys.readouterr().err.strip().splitlines()
        assert len(warnings) == 3 and all(w.startswith("warning: ") and "my-push-pkg" in w for w in warnings), warnings
        assert any("task 'gone' of package my-push-pkg: mypkg.missing:make does not load (ModuleNotFoundError" in w for w in warnings)
        assert any("task 'number' of package my-push-pkg: mypkg.tasks:NOT_A_FACTORY is not callable (int)" in w for w in warnings)
        assert any("declares task 'push', a name a built-in task already has" in w for w in warnings)
        assert resolve_task("push").source == "built-in"
        result = CliRunner().invoke(app, ["tasks", "gone"])  # asked for by name: one line, no traceback
        assert result.exit_code == 2 and result.output.count("\n") == 1 and "fix or uninstall my-push-pkg" in result.output, result.output
    finally:
        for name in ("mypkg", "mypkg.tasks"):
            sys.modules.pop(name, None)


def test_the_smoke_pipeline_runs_on_an_installed_packages_task(third_party, tmp_path):
    result = CliRunner().invoke(app, ["pipeline", "--task", "my-push", "--budget", "smoke", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "pipeline: task my-push, budget smoke" in result.output and _lines(result.output, "one-step  ")
    demos = ZarrEpisodeStore.open(tmp_path / "p" / "demos.zarr")
    assert {m.task for m in demos.metas} == {"my-push"} and max(demos.episode_bounds(i)[1] - demos.episode_bounds(i)[0] for i in range(demos.num_episodes)) <= 50


def test_a_module_path_task_records_trains_and_evaluates_without_being_registered(third_party, tmp_path):
    task = "mypkg.tasks:make_task"
    runner = CliRunner()
    result = runner.invoke(app, ["tasks", task])
    assert result.exit_code == 0 and _lines(result.output, task)[0].split()[-2:] == ["module", "path"], result.output
    result = runner.invoke(app, ["record", "--task", task, "--teleop", "scripted", "--episodes", "2", "--out", str(tmp_path / "demos.zarr")])
    assert result.exit_code == 0, result.output
    assert {m.task for m in ZarrEpisodeStore.open(tmp_path / "demos.zarr").metas} == {task}
    result = runner.invoke(app, ["train", "imitation", "--data", str(tmp_path / "demos.zarr"), "--out", str(tmp_path / "il"), "--steps", "3"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["eval", "--policy", str(tmp_path / "il"), "--episodes", "2"])  # no --task: the checkpoint's
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].split()[:3] == [task, "ddpm-mean", "2"], result.output
    assert "was trained on task" not in result.output  # the checkpoint's task, no mismatch warning (a safety guard may warn)
    assert task not in task_names()  # used, not registered


def test_every_command_that_runs_a_policy_defaults_to_its_checkpoints_task():
    from workflow.deploy import DeployConfig
    from workflow.diagnostics.diagnose import DiagnoseConfig
    from workflow.diagnostics.ranking import RankingConfig
    from workflow.evaluate import EvalConfig
    from workflow.offline import OfflineConfig
    from workflow.online import OnlineConfig

    configs = [EvalConfig(policy=Path("p")), OnlineConfig(policy="p", out="o"), OfflineConfig(policy="p", data="d", out="o"),
               RankingConfig(policy="p", critics="c"), DiagnoseConfig(run="r")]  # fmt: skip
    assert [c.task for c in configs] == [None] * len(configs)
    assert DeployConfig(policy=Path("p")).robot is None  # sim:<the checkpoint's task>


def test_a_task_other_than_the_checkpoints_is_kept_with_one_warning_line(tmp_path, clean_registry):
    from tests.test_imitation import record_demos
    from workflow.deploy import DeployConfig, deploy
    from workflow.policy import policy_task

    record_demos(tmp_path / "demos.zarr", 2)
    result = CliRunner().invoke(app, ["train", "imitation", "--data", str(tmp_path / "demos.zarr"), "--out", str(tmp_path / "il"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    policy = str(tmp_path / "il")
    assert policy_task(policy) == "push"
    register_task("short-push", lambda camera=None, **o: make_scene("push", camera=camera, **{"max_steps": 10, **o}))
    result = CliRunner().invoke(app, ["eval", "--policy", policy, "--episodes", "1", "--task", "short-push"])
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1].split()[0] == "short-push", result.output
    assert _lines(result.output, "warning") == [f"warning: {policy} was trained on task push; running it on short-push as --task says"]
    lines: list[str] = []

    class Stream:
        def write(self, text: str) -> None:
            lines.extend(line for line in text.splitlines() if line)

        def flush(self) -> None:
            pass

    report = deploy(DeployConfig(policy=Path(policy), robot="sim:short-push", episodes=1, hz=0, out=tmp_path / "d.zarr"), stream=Stream())
    assert report.robot == "sim:short-push" and report.episodes[0].length <= 10
    assert f"warning: {policy} was trained on task push; running it on short-push as --robot says" in lines
