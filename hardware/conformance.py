"""``check_robot``: the conformance checker every robot (sim backend or real driver) must pass.

In the spirit of gymnasium's ``check_env``: it drives the robot through the
contract of ``robot.protocols.Robot`` and the safety layer's promises, and
raises :class:`ConformanceError` naming the first check that failed, or returns
a :class:`ConformanceReport` listing the checks passed. Give it a robot that is
not connected yet and may move a few centimetres (sim, or a real arm with room
around it); it leaves the robot disconnected.

The safety checks use the ``SafeRobot`` API (``estop``, ``hold``, ``counters``,
``arm_state``, ``limits``, ``layout``, ``override_watchdog``): the watchdog is
verified by running a short timeout through ``override_watchdog``, so robots
built without a watchdog are checked too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from robot.protocols import Observation, Robot
from robot.types import ACTION, TIMESTAMP, Feature

CHECKS = ("features", "context-manager", "observation", "action-limits", "nan-action", "estop", "watchdog", "reconnect")
SAFETY_API = (
    "estop", "clear_estop", "is_estopped", "hold", "counters", "arm_state", "limits", "layout", "override_watchdog"
)  # fmt: skip


class ConformanceError(AssertionError):
    """A robot broke its contract; ``check`` names which part (one of :data:`CHECKS`)."""

    def __init__(self, check: str, robot: str, message: str):
        super().__init__(f"conformance check {check!r} failed for robot {robot}: {message}")
        self.check = check


@dataclass(frozen=True)
class ConformanceReport:
    """What :func:`check_robot` verified, and the safety counters it left behind."""

    robot: str
    passed: tuple[str, ...]
    counters: Mapping[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"robot {self.robot}: {len(self.passed)}/{len(CHECKS)} conformance checks passed"]
        return "\n".join(lines + [f"  ok  {check}" for check in self.passed])


def check_robot(
    robot: Robot,
    *,
    steps: int = 5,
    seed: int = 0,
    hold_tolerance_m: float = 0.005,
    watchdog_timeout_s: float = 0.05,
) -> ConformanceReport:
    """Check ``robot`` against the Robot contract and the safety layer; see the module docstring.

    ``steps`` random in-limit commands are sent, then an out-of-limits one;
    ``hold_tolerance_m`` is how far the end effector may drift while the arm
    holds (NaN command, e-stop, watchdog); ``watchdog_timeout_s`` is the timeout
    the watchdog check runs with.
    """
    c = _Checker(robot, np.random.default_rng(seed), hold_tolerance_m)
    c.features()
    with robot as entered:
        c.expect(
            "context-manager",
            entered is robot and robot.is_connected,
            "`with robot as r` must connect and bind r to the robot",
        )
        c.expect(
            "features",
            c.unchanged_features(),
            "features changed on connect(); they must be fixed before connect()",
        )
        c.observation(seed)
        c.action_limits(steps)
        c.nan_action()
        c.estop()
        c.watchdog(watchdog_timeout_s)
    c.expect("context-manager", not robot.is_connected, "leaving `with robot:` must disconnect the robot")
    c.passed.append("context-manager")
    c.reconnect(seed + 1)
    return ConformanceReport(c.name, tuple(k for k in CHECKS if k in c.passed), c.safe.counters.as_dict())


class _Checker:
    """The checks, one method each, sharing the robot, its features and the last timestamp seen."""

    def __init__(self, robot: Robot, rng: np.random.Generator, tolerance: float):
        self.robot, self.rng, self.tolerance = robot, rng, tolerance
        self.safe: Any = robot  # the same robot through the SafeRobot API, verified in features()
        self.name = str(getattr(robot, "name", type(robot).__name__))
        self.passed: list[str] = []
        self.last_stamp = -np.inf

    def fail(self, check: str, message: str) -> ConformanceError:
        return ConformanceError(check, self.name, message)

    def expect(self, check: str, ok: bool, message: str) -> None:
        if not ok:
            raise self.fail(check, message)

    def features(self) -> None:
        robot = self.robot
        missing = [attr for attr in SAFETY_API if not hasattr(robot, attr)]
        self.expect(
            "features",
            not missing,
            f"no safety layer ({', '.join(missing)} missing); wrap the arm in hardware.safety.SafeRobot",
        )
        self.expect(
            "features",
            isinstance(robot, Robot),
            f"{type(robot).__name__} does not implement robot.protocols.Robot",
        )
        self.expect(
            "features",
            not robot.is_connected,
            "pass a robot that is not connected yet, so features are read before connect()",
        )
        self.obs_features, act_features = dict(robot.observation_features), dict(robot.action_features)
        ok = bool(self.obs_features) and all(isinstance(f, Feature) for f in self.obs_features.values())
        self.expect(
            "features",
            ok,
            f"observation_features must be a non-empty mapping of Feature, got {self.obs_features!r}",
        )
        action = act_features.get(ACTION)
        self.expect(
            "features",
            action is not None and len(action.shape) == 1,
            f"needs a vector {ACTION!r} feature, got {act_features!r}",
        )
        self.act_features, self.action = act_features, action
        step = np.asarray(self.safe.limits.max_step, dtype=np.float64)
        self.low = np.asarray(action.low, dtype=np.float64) if action.low is not None else -step
        self.high = np.asarray(action.high, dtype=np.float64) if action.high is not None else step
        self.passed.append("features")

    def unchanged_features(self) -> bool:
        obs, act = dict(self.robot.observation_features), dict(self.robot.action_features)
        return obs == self.obs_features and act == self.act_features

    def observation(self, seed: int) -> None:
        self.check_obs("observation", self.robot.reset(seed), "reset(): ")
        self.check_obs("observation", self.robot.get_observation())
        self.passed.append("observation")

    def action_limits(self, steps: int) -> None:
        step = np.asarray(self.safe.limits.max_step)
        box_low, box_high = np.asarray(self.safe.limits.workspace_low), np.asarray(self.safe.limits.workspace_high)
        requests = [self.rng.uniform(self.low, self.high) for _ in range(steps)] + [self.corner(scale=1e3)]
        for request in requests:
            applied = np.asarray(self.robot.send_action(request.astype(self.action.dtype)))
            ok = applied.shape == tuple(self.action.shape) and bool(np.all(np.isfinite(applied)))
            self.expect(
                "action-limits",
                ok,
                f"send_action returned {applied!r} for {request}; it must return the finite action sent",
            )
            inside = np.all(applied >= self.low - 1e-6) and np.all(applied <= self.high + 1e-6)
            self.expect(
                "action-limits",
                inside,
                f"applied {applied} leaves the action bounds {self.low}..{self.high} (asked {request})",
            )
            if self.safe.layout.mode == "ee_delta":
                self.expect(
                    "action-limits",
                    np.all(np.abs(applied) <= step + 1e-6),
                    f"applied {applied} exceeds max_step {step}",
                )
            self.check_obs("observation", self.robot.get_observation())
            ee = self.ee()
            inside = np.all(ee >= box_low - self.tolerance) and np.all(ee <= box_high + self.tolerance)
            self.expect("action-limits", inside, f"end effector {ee} left the workspace box {box_low}..{box_high}")
        self.passed.append("action-limits")

    def nan_action(self) -> None:
        self.settle()
        before, counted = self.ee(), self.safe.counters.nonfinite
        size = self.action.shape[0]
        for bad in (np.full(size, np.nan), np.where(np.arange(size) == 0, np.inf, 0.0)):
            applied = np.asarray(self.robot.send_action(bad.astype(self.action.dtype)))
            self.expect(
                "nan-action",
                bool(np.all(np.isfinite(applied))),
                f"a non-finite command was forwarded as {applied}",
            )
        counted = self.safe.counters.nonfinite - counted
        self.expect("nan-action", counted == 2, f"2 non-finite commands were counted as {counted}")
        self.check_still("nan-action", before)
        self.passed.append("nan-action")

    def estop(self) -> None:
        self.safe.estop()
        before, holds = self.ee(), self.safe.counters.estop_holds
        for _ in range(3):
            self.hold_action = np.asarray(self.robot.send_action(self.corner().astype(self.action.dtype)))
        latched = self.safe.is_estopped and self.safe.counters.estop_holds >= holds + 3
        self.expect("estop", latched, "the e-stop did not latch: commands after estop() were not all held")
        self.check_still("estop", before)
        self.safe.clear_estop()
        holds = self.safe.counters.estop_holds
        self.robot.send_action(self.hold_action)
        self.expect(
            "estop",
            not self.safe.is_estopped and self.safe.counters.estop_holds == holds,
            "commands still held after clear_estop()",
        )
        self.passed.append("estop")

    def watchdog(self, timeout: float) -> None:
        with self.safe.override_watchdog(timeout):
            holds = self.safe.counters.watchdog_holds
            self.robot.send_action(self.hold_action)
            before = self.ee()
            time.sleep(6 * timeout)
            fired = self.safe.counters.watchdog_holds > holds
            self.expect("watchdog", fired, f"no hold after {6 * timeout:.2f} s without commands (timeout {timeout} s)")
            self.check_still("watchdog", before)
        self.passed.append("watchdog")

    def reconnect(self, seed: int) -> None:
        with self.robot:
            self.check_obs("reconnect", self.robot.reset(seed), "reset(): ")
            self.robot.send_action(self.hold_action)
            self.check_obs("reconnect", self.robot.get_observation())
        self.passed.append("reconnect")

    # -- helpers ----------------------------------------------------------------------------

    def check_obs(self, check: str, obs: Observation, where: str = "") -> None:
        """Keys, shapes, dtypes, finiteness and a monotonic timestamp."""
        self.expect(check, isinstance(obs, dict), f"{where}an observation must be a dict, got {type(obs).__name__}")
        missing = sorted(set(self.obs_features) - set(obs))
        extra = sorted(set(obs) - set(self.obs_features) - {TIMESTAMP})
        self.expect(
            check,
            not (missing or extra),
            f"{where}keys differ from observation_features: missing {missing}, unexpected {extra}",
        )
        for key, feature in self.obs_features.items():
            value = obs[key]
            self.expect(
                check,
                isinstance(value, np.ndarray),
                f"{where}{key} is a {type(value).__name__}, expected np.ndarray",
            )
            same = value.shape == tuple(feature.shape) and value.dtype == np.dtype(feature.dtype)
            self.expect(check, same, f"{where}{key} is {value.dtype} {value.shape}, expected {feature.describe()}")
            finite = value.dtype.kind != "f" or bool(np.all(np.isfinite(value)))
            self.expect(check, finite, f"{where}{key} holds NaN or inf")
        self.expect(check, TIMESTAMP in obs, f"{where}observation has no {TIMESTAMP!r}")
        stamp, now = float(obs[TIMESTAMP]), time.monotonic()
        self.expect(
            check,
            abs(stamp - now) < 60.0,
            f"{where}timestamp {stamp} is not from time.monotonic() (now {now})",
        )
        self.expect(
            check,
            stamp >= self.last_stamp,
            f"{where}timestamp went backwards: {stamp} after {self.last_stamp}",
        )
        self.last_stamp = stamp

    def corner(self, scale: float = 1.0) -> np.ndarray:
        """A random corner of the action bounds, pushed out by ``scale``."""
        return np.where(self.rng.random(len(self.low)) < 0.5, self.low, self.high) * scale

    def ee(self) -> np.ndarray:
        return np.array(self.safe.arm_state().ee_position, dtype=np.float64)

    def settle(self, max_holds: int = 100, still_m: float = 2e-4) -> None:
        """Hold until the end effector stops (moves < ``still_m`` in one period): drift checks start at rest."""
        before = self.ee()
        for _ in range(max_holds):
            self.safe.hold()
            now = self.ee()
            if np.linalg.norm(now - before) < still_m:
                return
            before = now

    def check_still(self, check: str, before: np.ndarray) -> None:
        moved = float(np.linalg.norm(self.ee() - before))
        tolerance = self.tolerance
        self.expect(
            check,
            moved <= tolerance,
            f"the end effector moved {moved * 1e3:.1f} mm while holding (allowed {tolerance * 1e3:.1f} mm)",
        )
