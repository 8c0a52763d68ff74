"""check_robot passes on every registered task and catches deliberately broken arms; the robot registry."""

from __future__ import annotations

import numpy as np
import pytest

from hardware.conformance import CHECKS, ConformanceError, check_robot
from hardware.mujoco import MujocoArm
from hardware.registry import make_robot, make_sim, robot_kinds
from hardware.safety import SafeRobot
from robot.protocols import Robot
from robot.types import STATE
from sim.registry import make_scene, task_names

SLOW_TASKS: frozenset[str] = frozenset()  # tasks whose single check takes > 20 s on a 2-core CPU
TASKS = [pytest.param(t, marks=pytest.mark.slow) if t in SLOW_TASKS else t for t in task_names()]


@pytest.mark.parametrize("task", TASKS)
def test_every_task_passes_the_conformance_check(task: str) -> None:
    robot = make_robot(f"sim:{task}")
    try:
        report = check_robot(robot)
    finally:
        robot.close()
    assert report.passed == CHECKS and report.robot == f"sim:{task}"
    assert report.counters["nonfinite"] == 2 and report.counters["watchdog_holds"] > 0
    assert not robot.is_connected


class _WrongShapeArm(MujocoArm):
    """Declares the push state but reports one entry too many."""

    def get_observation(self):
        obs = super().get_observation()
        return {**obs, STATE: np.append(obs[STATE], np.float32(0))}


class _DriftingHoldArm(MujocoArm):
    """``hold()`` keeps moving the pusher (round a small circle) instead of keeping the pose."""

    turn = 0.0

    def hold(self) -> np.ndarray:
        self.turn += 0.5
        self.scene.step(0.02 * np.array([np.cos(self.turn), np.sin(self.turn)], dtype=np.float32))
        return np.zeros(2, dtype=np.float32)


class _Float64Arm(MujocoArm):
    def get_observation(self):
        return {k: v.astype(np.float64) for k, v in super().get_observation().items()}


@pytest.mark.parametrize(
    "arm_type, check, match",
    [
        (_WrongShapeArm, "observation", r"observation.state is float32 \(9,\), expected float32 \(8,\)"),
        (_Float64Arm, "observation", "float64"),
        (_DriftingHoldArm, "nan-action", "moved"),
    ],
)
def test_broken_arms_are_caught(arm_type: type, check: str, match: str) -> None:
    robot = SafeRobot(arm_type(make_scene("push")))
    with pytest.raises(ConformanceError, match=match) as caught:
        check_robot(robot)
    assert caught.value.check == check
    robot.close()


def test_a_robot_without_the_safety_layer_is_caught() -> None:
    class Bare:
        """Forwards everything to the arm: no clamps, no e-stop, no watchdog."""

        def __init__(self) -> None:
            self.arm = MujocoArm(make_scene("push"))
            self.name = self.arm.name

        observation_features = property(lambda self: self.arm.observation_features)
        action_features = property(lambda self: self.arm.action_features)
        is_connected = property(lambda self: self.arm.is_connected)

        def connect(self) -> None:
            self.arm.connect()

        def disconnect(self) -> None:
            self.arm.disconnect()

        def reset(self, seed=None):
            return self.arm.reset(seed)

        def get_observation(self):
            return self.arm.get_observation()

        def send_action(self, action):
            self.arm.apply(action)
            return action

        def __enter__(self):
            self.connect()
            return self

        def __exit__(self, *exc):
            self.disconnect()

    bare = Bare()
    assert not isinstance(bare, Robot)  # the contract names the safety layer's controls (hold, e-stop, counters)
    with pytest.raises(ConformanceError, match="SafeRobot") as caught:
        check_robot(bare)
    assert caught.value.check == "features"


def test_a_connected_robot_is_refused() -> None:
    with make_robot("push") as robot, pytest.raises(ConformanceError, match="not connected yet"):
        check_robot(robot)


def test_robot_specs() -> None:
    assert robot_kinds()[0] == "sim"
    plain, prefixed = make_robot("push"), make_robot("sim:push", max_steps=7)
    assert plain.name == prefixed.name == "sim:push"
    assert not plain.is_connected and plain.observation_features == prefixed.observation_features
    with pytest.raises(ValueError, match=r"unknown robot kind 'kuka'.*known kinds: sim"):
        make_robot("kuka:192.168.1.10")
    with pytest.raises(ValueError, match="names no target"):
        make_robot("sim:")
    with pytest.raises(ValueError, match="unknown task"):
        make_robot("sim:nope")


def test_make_sim_shares_one_scene() -> None:
    robot, task = make_sim("push", max_steps=7)
    assert task.max_steps == 7
    with robot:
        obs = robot.reset(0)
        applied = robot.send_action(np.array([0.01, 0.0], dtype=np.float32))
        outcome = task.evaluate(robot.get_observation(), applied)
    assert set(outcome.terms) == set(task.reward_scales) and obs[STATE].shape == (8,)
    robot.close()
