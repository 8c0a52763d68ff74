"""The safety layer on every registered task: NaN rejection, max step and workspace clipping,
joint and velocity limits, the watchdog and the latched e-stop; plus joint-position clipping
and config validation on small stand-ins."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hardware.arm import ActionLayout, ArmLimits, ArmState
from hardware.registry import make_robot
from hardware.safety import SafeRobot, SafetyConfig
from robot.types import ACTION, STATE, Feature
from sim.push import PushScene
from sim.registry import task_names

SLOW_TASKS: frozenset[str] = frozenset()  # tasks whose single check takes > 20 s on a 2-core CPU


def task_params() -> list:
    return [pytest.param(t, marks=pytest.mark.slow) if t in SLOW_TASKS else t for t in task_names()]


@pytest.fixture(scope="module", params=task_params())
def robot(request: pytest.FixtureRequest):
    """One robot per task for the whole module (robosuite scenes take seconds to build)."""
    r = make_robot(f"sim:{request.param}")
    yield r
    r.close()


@pytest.fixture
def connected(robot: SafeRobot):
    with robot:
        robot.reset(0)
        robot.counters.reset()
        yield robot


def ee(robot: SafeRobot) -> np.ndarray:
    return np.array(robot.arm_state().ee_position)


def settle(robot: SafeRobot, holds: int = 40) -> None:
    for _ in range(holds):
        robot.hold()


def test_nan_action_holds_and_is_counted(connected: SafeRobot) -> None:
    settle(connected)
    before = ee(connected)
    size = connected.layout.size
    for bad in (np.full(size, np.nan), np.r_[np.inf, np.zeros(size - 1)], np.r_[np.zeros(size - 1), -np.inf]):
        applied = connected.send_action(bad.astype(np.float32))
        assert np.all(np.isfinite(applied))
        assert np.all(np.abs(applied[list(connected.layout.motion)]) < 1e-3)  # a hold: at most a tiny correction
        assert connected.last_interventions == ("nonfinite",)
    assert connected.counters.nonfinite == 3
    assert np.linalg.norm(ee(connected) - before) < 1e-3


def test_out_of_limits_action_is_clipped_and_the_arm_stays_in_the_box(connected: SafeRobot) -> None:
    layout, limits = connected.layout, connected.limits
    step = np.asarray(limits.max_step)
    applied = connected.send_action(np.full(layout.size, 100.0, dtype=np.float32))
    assert np.all(np.abs(applied) <= step + 1e-6)
    assert "step_clipped" in connected.last_interventions
    low, high = np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)
    axes = len(layout.translation)
    for sign, steps in ((1.0, 200), (-1.0, 100)):
        push = np.zeros(layout.size, dtype=np.float32)
        push[list(layout.translation)] = sign * 100.0
        for _ in range(steps):
            applied = connected.send_action(push)
            assert np.all(np.abs(applied) <= step + 1e-6)
            # The box bounds the commands; tracking lag adds a few mm (robosuite's UR5e OSC: up to ~5 mm).
            position = ee(connected)[:axes]
            assert np.all(position >= low[:axes] - 0.01) and np.all(position <= high[:axes] + 0.01), position
    assert connected.counters.workspace_clipped + connected.counters.joint_limited > 0
    q = np.asarray(connected.arm_state().joint_positions)
    assert np.all(q >= np.asarray(limits.joint_low)) and np.all(q <= np.asarray(limits.joint_high))


def test_silent_controller_triggers_the_watchdog_and_the_arm_stays_put(connected: SafeRobot) -> None:
    timeout = 0.1
    with connected.override_watchdog(timeout):
        settle(connected)
        small, xyz = np.zeros(connected.layout.size, dtype=np.float32), list(connected.layout.translation)
        small[xyz] = 0.1 * np.asarray(connected.limits.max_step)[xyz]
        connected.send_action(small)
        settle(connected, 10)
        silent_since, before = time.monotonic(), ee(connected)
        while connected.counters.watchdog_holds == 0 and time.monotonic() - silent_since < 2.0:
            time.sleep(0.005)
        first_hold = time.monotonic() - silent_since
        time.sleep(5 * timeout)
    holds = connected.counters.watchdog_holds
    assert holds >= 2
    assert first_hold < 2.5 * timeout  # timeout plus one watchdog period, with slack for a busy CPU
    assert np.linalg.norm(ee(connected) - before) < 3e-3
    time.sleep(3 * timeout)
    assert connected.counters.watchdog_holds == holds  # the watchdog stopped with the override


def test_estop_latches_until_cleared(connected: SafeRobot) -> None:
    settle(connected)
    before = ee(connected)
    connected.estop()
    request = np.asarray(connected.limits.max_step, dtype=np.float32) * 0.5
    for _ in range(5):
        applied = connected.send_action(request)
        assert np.all(np.abs(applied[list(connected.layout.motion)]) < 1e-3)
        assert connected.last_interventions == ("estop_holds",)
    assert connected.is_estopped and connected.counters.estop_holds == 6  # estop() itself holds once
    assert np.linalg.norm(ee(connected) - before) < 1e-3
    with pytest.raises(RuntimeError, match="clear_estop"):
        connected.reset(1)
    connected.clear_estop()
    applied = connected.send_action(request)
    assert connected.counters.estop_holds == 6
    assert np.any(applied[list(connected.layout.translation)] != 0)


def test_wrong_shape_or_dtype_is_a_clear_error(connected: SafeRobot) -> None:
    size = connected.layout.size
    with pytest.raises(ValueError, match=rf"expects an action of shape \({size},\).*got shape \({size + 1},\)"):
        connected.send_action(np.zeros(size + 1, dtype=np.float32))
    with pytest.raises(TypeError, match="not a real number type"):
        connected.send_action(np.array(["a"] * size))


@pytest.mark.parametrize("declared", [True, False], ids=["declared-response", "learned-directions"])
def test_joint_limit_cancels_only_motion_toward_the_limit(declared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Push: the pusher's slide joints share the table's bounds, so the joint band (2% in) is hit first. The
    guard works from the scene's declared joint response, or without one learns from the arm's motion."""
    if not declared:
        monkeypatch.setattr(PushScene, "joint_response", lambda self, state: None)
    with make_robot("push") as robot:
        robot.reset(0)
        for _ in range(40):
            robot.send_action(np.array([1.0, 0.0], dtype=np.float32))
        q = robot.arm_state().joint_positions[0]
        assert robot.counters.joint_limited > 0 and q <= robot.limits.joint_high[0]
        applied = robot.send_action(np.array([-0.01, 0.0], dtype=np.float32))
        assert applied[0] == pytest.approx(-0.01) and "joint_limited" not in robot.last_interventions


def test_a_joint_reached_diagonally_still_lets_motion_along_its_limit_pass() -> None:
    """Remembering the commands that drove a joint in (the guard without a declared response) forbade sliding
    along the limit after a zig-zag approach: its push-rim policies stood still at the table's edge for the rest
    of the episode. With the pusher's declared response only the component into the limit goes."""
    with make_robot("push") as robot:
        robot.reset(0)
        step = robot.limits.max_step[0]
        for i in range(40):  # into the x limit on alternating diagonals
            robot.send_action(np.array([step, step / 2 * (-1) ** i], dtype=np.float32))
        assert robot.arm_state().joint_positions[0] >= robot.limits.joint_high[0] - 0.02 * np.ptp([robot.limits.joint_low[0], robot.limits.joint_high[0]])
        along = robot.send_action(np.array([0.0, step / 2], dtype=np.float32))
        assert along.tolist() == [0.0, pytest.approx(step / 2)] and "joint_limited" not in robot.last_interventions
        into_and_along = robot.send_action(np.array([step / 2, -step / 2], dtype=np.float32))
        assert into_and_along[0] == 0.0 and into_and_along[1] == pytest.approx(-step / 2)
        assert "joint_limited" in robot.last_interventions


def test_fast_joints_cancel_motion() -> None:
    with make_robot("push", safety=SafetyConfig(velocity_scale=1e-3)) as robot:
        robot.reset(0)
        robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
        applied = robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
        assert np.all(applied == 0) and robot.last_interventions == ("velocity_limited",)


def test_workspace_override_narrows_the_box() -> None:
    box = SafetyConfig(workspace_low=(-0.1, -0.1, -1.0), workspace_high=(0.1, 0.1, 1.0))
    with make_robot("push", safety=box) as robot:
        assert robot.limits.workspace_low[2] == pytest.approx(0.01)  # never wider than the scene's own box
        robot.reset(3)
        start = np.abs(ee(robot)[:2])
        for _ in range(60):
            robot.send_action(np.array([1.0, 1.0], dtype=np.float32))
        assert np.all(np.abs(ee(robot)[:2]) <= np.maximum(start, 0.1) + 2e-3)


def test_a_guard_firing_on_most_steps_is_one_warning_naming_the_guard_the_axis_and_the_limit(capsys) -> None:
    box = SafetyConfig(workspace_low=(-0.1, -0.1, -1.0), workspace_high=(0.1, 0.1, 1.0))
    with make_robot("push", safety=box) as robot:
        for episode in range(2):
            robot.reset(3)
            for _ in range(40):  # pushes into the x = 0.1 wall: the box clips dx on most steps
                robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
            assert robot.episode_guards["commands"] == 40 and robot.episode_guards["workspace_clipped"] > 20
        robot.reset(3)  # ends the second episode: the same guard and axis are not warned about twice
        for _ in range(40):  # a quiet episode: nothing to say
            robot.send_action(np.array([-0.005, 0.0], dtype=np.float32))
        assert robot.end_episode() == ()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: safety guard")]
    assert len(lines) == 1, lines
    assert "workspace_clipped fired on" in lines[0] and "of 40 commands" in lines[0]
    assert "axis x (action dx; workspace -0.100..0.100 m" in lines[0] and "SafetyConfig" in lines[0]


def test_robots_of_one_task_and_config_warn_once_per_process(capsys) -> None:
    """Lanes build a robot per lane, a pipeline hundreds: the same guard at the same place is one line, not one per robot."""
    box = SafetyConfig(workspace_low=(-0.11, -0.11, -1.0), workspace_high=(0.11, 0.11, 1.0))
    for _ in range(3):
        with make_robot("push", safety=box) as robot:
            robot.reset(3)
            for _ in range(40):
                robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
            robot.reset(3)
    with make_robot("push", safety=SafetyConfig(workspace_low=(-0.12, -0.12, -1.0), workspace_high=(0.12, 0.12, 1.0))) as robot:
        robot.reset(3)
        for _ in range(40):  # another config: its own warning
            robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
        robot.reset(3)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: safety guard")]
    assert len(lines) == 2 and "-0.110..0.110 m" in lines[0] and "-0.120..0.120 m" in lines[1], lines


def test_a_joint_guard_warning_names_the_joint_and_its_limit(capsys) -> None:
    with make_robot("push", safety=SafetyConfig(joint_margin=0.4)) as robot:  # the pusher's slides: most of the range is "near"
        robot.reset(0)
        for _ in range(30):
            robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
        lines = robot.end_episode()
    assert len(lines) == 1 and "joint_limited" in lines[0] and "joint_margin 0.4" in lines[0], lines
    assert "mostly on joint pusher_x (at " in lines[0] and "of its high limit 0.250" in lines[0]
    assert "too strict" in lines[0] and "joint_margin 0.4" in lines[0]  # a margin wider than the default's: the config's
    assert lines[0] in capsys.readouterr().err


def test_guards_at_the_arm_s_own_workspace_and_joint_limits_do_not_advise_loosening_a_safety_config() -> None:
    """A policy that drives the pusher at the table's edge meets the arm's own wall and joint limits: no safety config
    narrowed them, so no warning may tell the user to loosen one (the main job's block-at-the-rim failures did)."""
    with make_robot("push") as robot:
        robot.reset(0)
        for _ in range(60):
            robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
        lines = robot.end_episode()
    guards = {line.split()[3] for line in lines}
    assert "workspace_clipped" in guards, lines
    for line in lines:
        assert "too strict" not in line and "SafetyConfig" not in line and "the arm's own" in line, line


def test_a_step_clipped_at_the_arm_s_own_step_is_not_called_a_safety_setting_to_loosen() -> None:
    """The pusher moves at most 0.025 m a command: a policy asking for more is told so; only a safety config's own
    narrower max_step gets the advice to loosen it."""
    for safety, narrowed in ((SafetyConfig(max_step=(0.05, 0.05)), False), (SafetyConfig(max_step=(0.01, 0.01)), True)):
        with make_robot("push", safety=safety) as robot:
            robot.reset(0)
            for _ in range(10):
                robot.send_action(np.array([0.03, 0.0], dtype=np.float32))
            lines = robot.end_episode()
        assert len(lines) == 1 and "step_clipped fired on 10 of 10 commands" in lines[0], lines
        assert ("too strict" in lines[0]) is narrowed and ("the arm's own step" in lines[0]) is not narrowed, lines[0]
        assert ("bounded to -0.01..0.01" if narrowed else "bounded to -0.025..0.025") in lines[0], lines[0]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"workspace_low": (0, 0, 0)}, "together"),
        ({"workspace_low": (0, 0, 0), "workspace_high": (1, 0, 1)}, "below"),
        ({"max_step": (0.1, 0.0)}, "positive"),
        ({"joint_margin": 0.6}, "fraction"),
        ({"velocity_scale": 0.0}, "velocity_scale"),
        ({"watchdog_timeout_s": 0.0}, "watchdog_timeout_s"),
    ],
)
def test_config_validates(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SafetyConfig(**kwargs)


class _JointArm:
    """A two-joint arm commanded by joint position, integrating targets exactly (for clipping tests)."""

    name, fps = "joint-stand-in", 10.0
    observation_features = {STATE: Feature((2,))}
    action_features = {ACTION: Feature((2,), names=("q0", "q1"), low=(-3.0, -3.0), high=(3.0, 3.0))}
    limits = ArmLimits((-1, -1, -1), (1, 1, 1), (0.5, 0.5), (-1.0, -1.0), (1.0, 1.0), (2.0, 2.0))
    layout = ActionLayout("joint_position", 2, joints=(0, 1))
    is_connected = False

    def __init__(self) -> None:
        self.q = np.zeros(2)

    def connect(self) -> None:
        self.is_connected = True

    def disconnect(self) -> None:
        self.is_connected = False

    def reset(self, seed: int | None = None) -> dict:
        self.q = np.zeros(2)
        return self.get_observation()

    def get_observation(self) -> dict:
        return {STATE: self.q.astype(np.float32)}

    def arm_state(self) -> ArmState:
        return ArmState(np.r_[self.q, 0.0], self.q.copy(), np.zeros(2))

    def apply(self, action: np.ndarray) -> None:
        self.q = np.asarray(action, dtype=np.float64)

    def hold(self) -> np.ndarray:
        return self.q.astype(np.float32)


def test_joint_position_targets_are_clipped_directly() -> None:
    arm = _JointArm()
    with SafeRobot(arm, SafetyConfig(joint_margin=0.1)) as robot:
        robot.reset(0)
        applied = robot.send_action(np.array([2.0, -0.1], dtype=np.float32))
        assert applied == pytest.approx([0.2, -0.1])  # 2 rad/s at 10 Hz, tighter than max_step 0.5
        assert set(robot.last_interventions) == {"step_clipped", "velocity_limited"}
        for _ in range(10):
            applied = robot.send_action(np.array([2.0, 0.0], dtype=np.float32))
        assert applied[0] == pytest.approx(0.8)  # the limit 1.0 less 10% of the range 2.0
        assert "joint_limited" in robot.last_interventions


def test_a_joint_position_driver_passes_the_conformance_check() -> None:
    from hardware.conformance import CHECKS, check_robot

    assert check_robot(SafeRobot(_JointArm())).passed == CHECKS


WORKSPACE_TOLERANCE_M = 0.015
"""How far past a wall of the workspace box the end effector may get under any command stream (momentum)."""


def _streams(size: int, high: np.ndarray, rng: np.random.Generator) -> dict:
    def pattern(*values: float):
        return lambda t: (high * np.r_[values][:size]).astype(np.float32)

    rotating = size >= 6
    return {
        "random in bounds": lambda t: rng.uniform(-high, high).astype(np.float32),
        "translation out": pattern(1, 1, 1, 0, 0, 0, 0),
        "translation and rotation out": pattern(1, -1, 1, 1, 1, -1, 1),
        "rotation only": pattern(0, 0, 0, 1, 1, 1, 0) if rotating else pattern(0, 0),
        "rotation flipping with the gripper": (lambda t: (high * np.r_[0, 0, 0, 1, -1, 1, 1] * (1 if (t // 20) % 2 else -1)).astype(np.float32))
        if rotating else pattern(-1, -1),
        "bang-bang": lambda t: (high * np.sign(rng.normal(size=size))).astype(np.float32),
    }


@pytest.mark.parametrize("task", ["push", "lift", "lift-ur5e", "ur5e:standin:lift", "franka:standin:lift", "xarm:standin:push"])
def test_the_workspace_box_holds_for_any_command_stream(task: str) -> None:
    """Random and adversarial streams inside the action bounds: translation, rotation, gripper, mixtures, on sim
    tasks and the drivers' vendor stand-ins. On lift a rotation-only stream once carried the end effector 0.22 m
    out (turning the hand moves the guarded point)."""
    from hardware.registry import open_robot

    robot, _ = open_robot(task)
    rng = np.random.default_rng(0)
    with robot:
        size = robot.action_features[ACTION].shape[0]
        high = np.asarray(robot.action_features[ACTION].high, np.float32)
        low_box, high_box = np.array(robot.limits.workspace_low), np.array(robot.limits.workspace_high)
        for name, stream in _streams(size, high, rng).items():
            travelled = 0.0
            for seed in range(2):
                robot.reset(seed)
                start = np.array(robot.arm_state().ee_position)
                for t in range(150):
                    robot.send_action(stream(t))
                    ee = np.array(robot.arm_state().ee_position)
                    out = float(max(np.max(low_box - ee), np.max(ee - high_box), 0.0))
                    assert out <= WORKSPACE_TOLERANCE_M, f"{task}, {name}, seed {seed}, step {t}: {out * 100:.1f} cm outside the box"
                    travelled = max(travelled, float(np.linalg.norm(ee - start)))
            if name == "translation out":
                assert travelled > 0.05, f"{task}: the arm hardly moved ({travelled * 100:.1f} cm): the stream tested nothing"
