"""The safety layer: every arm, simulated or real, becomes a ``Robot`` only through :class:`SafeRobot`.

Per command, in order: shape/dtype check (error), the latched e-stop (hold),
NaN/inf rejection (hold), the action feature's bounds and the per-dimension max
step (clip), the workspace box (clip the translation so the predicted
end-effector position stays inside, braking near the walls), joint limits and
joint velocity limits (cancel motion). Between commands a watchdog holds the
arm whenever the command stream goes silent for longer than its timeout. Every
intervention is counted in :class:`SafetyCounters`;
:attr:`SafeRobot.last_interventions` says which ones fired on the last command.
``send_action`` returns what was really sent. A guard that fires on most commands
of an episode is a configuration problem, not a safety event: at the episode's end
(:meth:`SafeRobot.end_episode`, called by the episode engine, by the next reset and
by disconnect) one warning line names the guard, the joint or axis, and the limit.

End-effector delta actions cannot be clamped per joint without the arm's
kinematics. An arm that declares them (``joint_response``: each joint's motion
per unit of commanded motion) gets exact cancelling: a joint inside
``joint_margin`` of its limit removes the component of motion that drives it
further in, and motion along the limit or away passes unchanged. Otherwise the
check learns from the arm itself: when a joint inside the margin moved toward
its limit after a command, the direction of that command's motion is
remembered for the joint, and later commands lose their component along it.
That is conservative: a diagonal approach forbids sliding along the limit in
the approach's direction, and a policy whose command points into those
remembered directions stands still (push-rim: 4 of 200 episodes).
Joint-position actions are clipped directly (step,
limits, velocity); the workspace box needs forward kinematics for them and is
left to the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from hardware.arm import ActionLayout, Arm, ArmLimits, ArmState, action_feature, declared_joint_response
from robot.protocols import Observation
from robot.types import TIMESTAMP, Feature, SafetyConfig, SafetyCounters  # noqa: F401  (both re-exported: their old home)

_MAX_DIRECTIONS = 3  # remembered pushing directions per joint
DOMINANT_FRACTION = 0.5
"""A guard that fired on more than this fraction of an episode's commands gets a warning at the episode's end."""
DOMINANT_MIN_COMMANDS = 10
"""Episodes shorter than this many commands are never warned about."""
_WARNED: set[tuple[str, str, str, str]] = set()
"""(robot name, safety config, guard, where) warned about in this process: an evaluation in lanes builds 32 robots of one
task, a pipeline hundreds, and each would otherwise repeat the same line."""
_WARNED_LOCK = threading.Lock()
_OWN_LIMIT = {
    "step_clipped": "that is the arm's own step, not a safety setting: the policy, or its exploration noise, asks for more "
                    "motion than one command can carry",
    "workspace_clipped": "that is the arm's own workspace, not a safety setting: the policy, or its exploration noise, drives "
                         "the arm at a wall it cannot pass",
    "joint_limited": "that is the arm's own joint limit (less the default joint_margin), not a safety setting: the policy, or "
                     "its exploration noise, drives the joint into it",
    "velocity_limited": "that is the arm's own velocity limit, not a safety setting: the policy, or its exploration noise, "
                        "asks for faster motion than the arm may make",
}  # fmt: skip
"""A guard's advice where it acted on the arm's own limit: loosening a safety config is advised only where one narrowed it."""


class SafeRobot:
    """An :class:`hardware.arm.Arm` behind the safety layer: a ``robot.protocols.Robot``.

    ``limits`` are the effective limits (the arm's, narrowed by ``config``).
    Use as a context manager: ``with SafeRobot(arm) as robot: ...``.
    """

    def __init__(self, arm: Arm, config: SafetyConfig = SafetyConfig(), name: str | None = None):
        self.arm = arm
        self.config = config
        self.name = name or arm.name
        self._feature = action_feature(arm)
        self._layout = arm.layout
        self.limits = _effective_limits(arm, config, self._feature.shape[0])
        self.counters = SafetyCounters()
        self.last_interventions: tuple[str, ...] = ()
        self._low = np.array(self._feature.low if self._feature.low is not None else [-np.inf] * self._layout.size)
        self._high = np.array(self._feature.high if self._feature.high is not None else [np.inf] * self._layout.size)
        self._lock = threading.RLock()
        self._estopped = False
        self._last_command: float | None = None  # None: the watchdog is not armed yet (no reset or command)
        self._watchdog_timeout = config.watchdog_timeout_s
        self._watchdog: _Watchdog | None = None
        self._pushing: dict[int, list[np.ndarray]] = {}  # joint -> unit motions that drove it toward its limit
        self._previous: _Command | None = None  # the last command applied since the last hold or reset
        self._episode = _GuardTally()  # commands and guard firings since the last reset
        self._warn_key = (self.name, repr(config))  # a guard's warning is printed once per process, robot and safety config

    # -- Robot contract -------------------------------------------------------------------

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        return self.arm.observation_features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        return self.arm.action_features

    @property
    def is_connected(self) -> bool:
        return self.arm.is_connected

    @property
    def layout(self) -> ActionLayout:
        """What each action entry does (the arm's declaration)."""
        return self._layout

    def connect(self) -> None:
        with self._lock:
            if not self.arm.is_connected:
                self.arm.connect()
            self._last_command = None
        self._start_watchdog()

    def disconnect(self) -> None:
        self._stop_watchdog()  # outside the lock: the watchdog thread may be waiting for it
        with self._lock:
            self.end_episode()
            if self.arm.is_connected:
                self.arm.disconnect()

    def close(self) -> None:
        """Disconnect, then let the arm release its resources (a sim scene's renderers) if it can."""
        self.disconnect()
        close = getattr(self.arm, "close", None)
        if callable(close):
            close()

    def __enter__(self) -> "SafeRobot":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()

    def reset(self, seed: int | None = None) -> Observation:
        """New initial state (sim) or home pose (real). Refused while the e-stop is latched."""
        with self._lock:
            if self._estopped:
                raise RuntimeError(f"robot {self.name} is e-stopped; call clear_estop() before reset()")
            self.end_episode()
            observation = self.arm.reset(seed)
            self._pushing.clear()
            self._previous = None
            self._last_command = time.monotonic()
            return _stamped(observation)

    def get_observation(self) -> Observation:
        with self._lock:
            return _stamped(self.arm.get_observation())

    def send_action(self, action: np.ndarray) -> np.ndarray:
        """Check, clamp and send one command; return the action really sent."""
        command = self._validated(action)
        with self._lock:
            if not self.arm.is_connected:
                raise RuntimeError(f"robot {self.name} is not connected; call connect() first (or use `with robot:`)")
            self._last_command = time.monotonic()
            if self._estopped:
                return self._hold("estop_holds")
            if not np.all(np.isfinite(command)):
                if not self.config.reject_nonfinite:
                    self.counters.nonfinite += 1
                    raise ValueError(f"robot {self.name} got a non-finite action {command}; fix the policy output")
                return self._hold("nonfinite")
            state = self.arm.arm_state()
            applied, fired, where = self._clamp(command, state)
            applied = applied.astype(self._feature.dtype)
            self.arm.apply(applied)
            self._previous = _Command(
                joints=np.array(state.joint_positions, dtype=np.float64),
                ee=np.array(state.ee_position, dtype=np.float64),
                motion=applied[list(self._layout.motion)].astype(np.float64),
            )
            for reason in fired:
                setattr(self.counters, reason, getattr(self.counters, reason) + 1)
            self.last_interventions = fired
            self._episode.add(where)
            return applied.copy()

    def end_episode(self) -> tuple[str, ...]:
        """Close the episode's guard tally: for each guard that fired on most of its commands (more than
        :data:`DOMINANT_FRACTION`, at least :data:`DOMINANT_MIN_COMMANDS` commands), print one warning line
        naming the guard, where it fired (joint, axis or action entry) and the limit, once per process, robot,
        safety config and guard; return the lines printed. The next episode starts a fresh tally."""
        with self._lock:
            tally, self._episode = self._episode, _GuardTally()
            by_guard: dict[str, list[tuple[str, int]]] = {}
            for reason, where, text, count in tally.dominant():
                key = (*self._warn_key, reason, where)
                with _WARNED_LOCK:
                    if key in _WARNED:
                        continue
                    _WARNED.add(key)
                by_guard.setdefault(reason, []).append((text, count, self._narrowed(reason, where)))
            lines = []
            for reason, places in by_guard.items():  # one line per guard, naming every place it dominated
                count = max(c for _, c, _ in places)
                if reason in _OWN_LIMIT and not any(narrowed for _, _, narrowed in places):
                    advice = _OWN_LIMIT[reason]
                else:
                    advice = ("if the task needs that motion this limit is too strict: give the task its own safety config (the "
                              "scene's `safety`, a robot.types.SafetyConfig) or pass safety=SafetyConfig(...)")  # fmt: skip
                line = (f"warning: safety guard {reason} fired on {count} of {tally.commands} commands of robot {self.name}'s "
                        f"episode, mostly on {' and on '.join(text for text, _, _ in places)}; {advice}")  # fmt: skip
                print(line, file=sys.stderr)
                lines.append(line)
            return tuple(lines)

    @property
    def episode_guards(self) -> dict[str, int]:
        """Commands and guard firings since the last reset: ``{"commands": n, "<guard>": count, ...}``."""
        with self._lock:
            return {"commands": self._episode.commands, **self._episode.fired}

    # -- safety controls ------------------------------------------------------------------

    def hold(self) -> np.ndarray:
        """Keep the current pose for one control period (counts as a command); return the hold action."""
        with self._lock:
            if not self.arm.is_connected:
                raise RuntimeError(f"robot {self.name} is not connected; call connect() first (or use `with robot:`)")
            self._last_command = time.monotonic()
            self._previous = None
            return np.array(self.arm.hold(), dtype=self._feature.dtype)

    def arm_state(self) -> ArmState:
        with self._lock:
            return self.arm.arm_state()

    def estop(self) -> None:
        """Latch the e-stop: hold now, and every later command holds until :meth:`clear_estop`."""
        self._estopped = True
        with self._lock:
            if self.arm.is_connected:
                self._hold("estop_holds")

    def clear_estop(self) -> None:
        self._estopped = False

    @property
    def is_estopped(self) -> bool:
        return self._estopped

    @property
    def watchdog_timeout_s(self) -> float | None:
        return self._watchdog_timeout

    @contextlib.contextmanager
    def override_watchdog(self, timeout_s: float | None) -> Iterator["SafeRobot"]:
        """Run the block with another watchdog timeout (None: off); the configured one comes back after."""
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"watchdog timeout must be positive or None, got {timeout_s}")
        previous = self._watchdog_timeout
        self._stop_watchdog()
        self._watchdog_timeout = timeout_s
        self._start_watchdog()
        try:
            yield self
        finally:
            self._stop_watchdog()
            self._watchdog_timeout = previous
            self._start_watchdog()

    # -- internals ------------------------------------------------------------------------

    def _validated(self, action: np.ndarray) -> np.ndarray:
        command = np.asarray(action)
        expected = tuple(self._feature.shape)
        if command.dtype.kind not in "iuf":
            raise TypeError(
                f"robot {self.name}: action dtype {command.dtype} is not a real number type; "
                f"send a float array of shape {expected}",
            )
        if command.shape != expected:
            names = f" ({', '.join(self._feature.names)})" if self._feature.names else ""
            raise ValueError(
                f"robot {self.name} expects an action of shape {expected}{names}, got shape {command.shape}; "
                "check that the policy's action_features match the robot's"
            )
        return command.astype(np.float64)

    def _hold(self, reason: str) -> np.ndarray:
        """Hold position, count ``reason``, forget the motion history. Caller holds the lock."""
        held = np.array(self.arm.hold(), dtype=self._feature.dtype)
        setattr(self.counters, reason, getattr(self.counters, reason) + 1)
        self._previous = None
        if reason != "watchdog_holds":
            self.last_interventions = (reason,)
        return held

    def _clamp(self, command: np.ndarray, state: ArmState) -> tuple[np.ndarray, tuple[str, ...], dict[str, tuple[str, str]]]:
        """Run the clamps in order; return the clamped action, the names of those that changed it, and for
        each of those where it acted and on which limit (for :meth:`end_episode`'s warning)."""
        if self._layout.mode == "joint_position":
            stages = self._joint_target_stages(state)
        else:
            step_low, step_high = self._step_bounds()
            low, high = self._workspace_bounds(state, step_low, step_high)
            stages = (
                ("step_clipped", lambda a: np.clip(a, step_low, step_high)),
                ("workspace_clipped", lambda a: self._still_rotation_near_walls(np.clip(a, low, high), state, step_high)),
                ("joint_limited", lambda a: self._cancel_joint_pushing(a, state, low, high)),
                ("velocity_limited", lambda a: self._cancel_when_too_fast(a, state)),
            )
        action, fired, where, dtype = command, [], {}, self._feature.dtype
        for reason, stage in stages:
            clamped = stage(action)
            changed = np.flatnonzero(clamped.astype(dtype) != action.astype(dtype))  # float32 0.025 is not "over" 0.025
            if changed.size:
                fired.append(reason)
                where[reason] = self._where(reason, changed, action, state)
            action = clamped
        return action, tuple(fired), where

    def _where(self, reason: str, changed: np.ndarray, action: np.ndarray, state: ArmState) -> tuple[str, str]:
        """Where guard ``reason`` acted (the joint, axis or action entry: the first it changed) and, in words,
        that place with its reading and limit."""
        names = self._feature.names or tuple(f"a{i}" for i in range(self._layout.size))
        joints = getattr(self.arm, "joint_names", None) or tuple(str(j) for j in range(len(self.limits.joint_low)))
        if reason == "joint_limited" and self._layout.mode != "joint_position" and self._pushing:
            j = min(self._pushing)
            low, high = self._joint_band()
            q = float(np.asarray(state.joint_positions)[j])
            side, limit, band = ("high", self.limits.joint_high[j], high[j]) if q >= high[j] else ("low", self.limits.joint_low[j], low[j])
            return f"joint {joints[j]}", (f"joint {joints[j]} (at {q:.3f}, inside joint_margin {self.config.joint_margin:g} of its "
                                          f"{side} limit {limit:.3f}: the guard starts at {band:.3f})")  # fmt: skip
        if reason == "velocity_limited" and self._layout.mode != "joint_position":
            qd = np.abs(np.asarray(state.joint_velocities, dtype=np.float64))
            limit = np.asarray(self.limits.max_joint_velocity) * self.config.velocity_scale
            j = int(np.argmax(qd / limit))
            return f"joint {joints[j]}", (f"joint {joints[j]} (moving at {qd[j]:.2f}, over its limit {limit[j]:.2f}: "
                                          f"max_joint_velocity x velocity_scale {self.config.velocity_scale:g})")  # fmt: skip
        i = int(changed[0])
        if reason == "workspace_clipped" and i in self._layout.translation:
            k = self._layout.translation.index(i)
            return f"axis {'xyz'[k]}", (f"axis {'xyz'[k]} (action {names[i]}; workspace {self.limits.workspace_low[k]:.3f}.."
                                        f"{self.limits.workspace_high[k]:.3f} m, braking at workspace_approach {self.config.workspace_approach:g})")  # fmt: skip
        if reason == "step_clipped":
            low, high = self._step_bounds()
            return f"action {names[i]}", f"action {names[i]} (asked {action[i]:.4g}, bounded to {low[i]:.4g}..{high[i]:.4g})"
        if self._layout.mode == "joint_position" and i in self._layout.joints:
            lows, highs = self._joint_band()
            j = self._layout.joints.index(i)
            return f"joint {joints[j]}", f"joint {joints[j]} (action {names[i]}; limits less joint_margin {lows[j]:.3f}..{highs[j]:.3f})"
        return f"action {names[i]}", f"action {names[i]}"

    def _narrowed(self, reason: str, where: str) -> bool:
        """Whether guard ``reason`` acted at ``where`` (as :meth:`_where` names it) on a limit this safety config made
        stricter than the arm's own (and the default config's), so that loosening the config is the advice."""
        config, arm = self.config, self.arm.limits
        place = where.partition(" ")[2]
        if reason == "step_clipped":
            names = self._feature.names or tuple(f"a{i}" for i in range(self._layout.size))
            i = names.index(place)
            own = min(arm.max_step[i], max(-self._low[i], self._high[i]))
            return config.max_step is not None and config.max_step[i] < own
        if reason == "workspace_clipped":  # an axis, or a rotation entry stilled near any wall
            axes = ["xyz".index(place)] if where.startswith("axis ") else range(len(arm.workspace_low))
            return any(self.limits.workspace_low[k] > arm.workspace_low[k] or self.limits.workspace_high[k] < arm.workspace_high[k]
                       for k in axes)  # fmt: skip
        if reason == "joint_limited":
            return config.joint_margin > SafetyConfig().joint_margin
        if reason == "velocity_limited":
            return config.velocity_scale < 1.0
        return True

    def _step_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Per action entry: the action feature's bounds within +-max_step."""
        step = np.asarray(self.limits.max_step, dtype=np.float64)
        return np.maximum(self._low, -step), np.minimum(self._high, step)

    def _workspace_bounds(self, state: ArmState, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Narrow the translation bounds so the predicted end effector stays in the box.

        Predicted = where the arm is plus the motion it still carries (its displacement since the
        last command, a one-period momentum estimate); one command may cover at most
        ``workspace_approach`` of the distance from there to a wall, so the arm brakes as it nears
        a wall instead of hitting it at full speed. Past a wall (momentum, controller drift, a
        disturbance) the same rule asks for motion back in, within the max step."""
        idx = list(self._layout.translation)
        ee = self._predicted_ee(state)[: len(idx)]
        k = self.config.workspace_approach
        to_low = k * (np.asarray(self.limits.workspace_low)[: len(idx)] - ee)
        to_high = k * (np.asarray(self.limits.workspace_high)[: len(idx)] - ee)
        low, high = low.copy(), high.copy()
        low[idx], high[idx] = np.clip(to_low, low[idx], high[idx]), np.clip(to_high, low[idx], high[idx])
        return low, high

    def _predicted_ee(self, state: ArmState) -> np.ndarray:
        """Where the end effector is plus the motion it still carries (its displacement since the last command)."""
        ee = np.asarray(state.ee_position, dtype=np.float64)
        return ee + (ee - self._previous.ee) if self._previous is not None else ee

    def _still_rotation_near_walls(self, action: np.ndarray, state: ArmState, step_high: np.ndarray) -> np.ndarray:
        """No rotation while the predicted end effector is within one translation step of a wall or past it.

        Turning the hand moves the point the box guards (and an arm near its limits drifts while it turns):
        on lift a rotation-only stream inside the action bounds carried the end effector 0.22 m out of the box
        while the translation clamp, which only shapes translation, kept asking for motion back in."""
        rotation = list(self._layout.rotation)
        if not rotation:
            return action
        idx = list(self._layout.translation)
        ee = self._predicted_ee(state)[: len(idx)]
        margin = np.asarray(step_high, dtype=np.float64)[idx]
        low, high = np.asarray(self.limits.workspace_low)[: len(idx)], np.asarray(self.limits.workspace_high)[: len(idx)]
        if np.all(ee >= low + margin) and np.all(ee <= high - margin):
            return action
        action = action.copy()
        action[rotation] = 0.0
        return action

    def _joints_near_limit(self, state: ArmState) -> tuple[np.ndarray, np.ndarray]:
        """Boolean masks: joints within the margin of their (high, low) limit."""
        q = np.asarray(state.joint_positions, dtype=np.float64)
        if not self.limits.joint_low:
            return np.zeros(0, bool), np.zeros(0, bool)
        if q.shape != (len(self.limits.joint_low),):
            raise ValueError(
                f"arm {self.arm.name} reports {q.shape} joint positions but declares limits for "
                f"{len(self.limits.joint_low)} joints; fix the driver's ArmLimits"
            )
        low, high = self._joint_band()
        return q >= high, q <= low

    def _joint_band(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint limits less ``joint_margin`` of each joint's range."""
        low = np.asarray(self.limits.joint_low, dtype=np.float64)
        high = np.asarray(self.limits.joint_high, dtype=np.float64)
        span = np.where(np.isfinite(high - low), high - low, 0.0)  # unlimited joints get no margin
        return low + self.config.joint_margin * span, high - self.config.joint_margin * span

    def _cancel_joint_pushing(
        self, action: np.ndarray, state: ArmState, low: np.ndarray, high: np.ndarray
    ) -> np.ndarray:
        """Remove the motion components that drove a near-limit joint further (learnt from the last
        command), then shrink the motion uniformly back inside ``low``..``high`` (which the removal
        may have left; uniform shrinking keeps every removed component removed)."""
        if not self.config.guard_joint_limits:
            return action
        response = declared_joint_response(self.arm, state)
        if response is None:
            self._learn_pushing_directions(state)
        else:
            self._pushing = self._directions_into_limits(state, np.asarray(response, dtype=np.float64))
        if not self._pushing:
            return action
        idx = list(self._layout.motion)
        motion = action[idx].copy()
        directions = [d for ds in self._pushing.values() for d in ds]
        for _ in range(10):  # alternating projections onto the half-spaces motion . d <= 0
            for d in directions:
                motion -= max(0.0, float(motion @ d)) * d
            if all(motion @ d <= 1e-12 for d in directions):
                break
        else:
            motion[:] = 0.0
        lo, hi = low[idx], high[idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where(motion > hi, hi / motion, np.where(motion < lo, lo / motion, 1.0))
        motion *= max(0.0, float(np.min(ratios, initial=1.0)))
        action = action.copy()
        action[idx] = motion
        return action

    def _directions_into_limits(self, state: ArmState, response: np.ndarray) -> dict[int, list[np.ndarray]]:
        """For each joint inside the margin, the unit motion that drives it further in, from the arm's declared
        ``joint_response``: the guard then removes that component alone, and motion along the limit passes."""
        near_high, near_low = self._joints_near_limit(state)
        if response.shape != (len(near_high), len(self._layout.motion)):
            raise ValueError(f"arm {self.arm.name}'s joint_response has shape {response.shape}, expected "
                             f"({len(near_high)}, {len(self._layout.motion)}): (joints, motion entries); fix the driver")  # fmt: skip
        directions = {}
        for j in np.flatnonzero(near_high | near_low):
            row = response[j] * (1.0 if near_high[j] else -1.0)
            norm = float(np.linalg.norm(row))
            if norm > 0:
                directions[int(j)] = [row / norm]
        return directions

    def _learn_pushing_directions(self, state: ArmState) -> None:
        """For each joint inside the margin that moved toward its limit after the last command,
        remember that command's motion direction; forget joints that left the margin."""
        near_high, near_low = self._joints_near_limit(state)
        q = np.asarray(state.joint_positions, dtype=np.float64)
        for j in range(len(near_high)):
            if not (near_high[j] or near_low[j]):
                self._pushing.pop(j, None)
                continue
            if self._previous is None:
                continue
            motion = self._previous.motion
            toward = (q[j] - self._previous.joints[j]) * (1.0 if near_high[j] else -1.0)
            norm = float(np.linalg.norm(motion))
            if toward > 0 and norm > 0:
                directions = self._pushing.setdefault(j, [])
                directions.append(motion / norm)
                del directions[:-_MAX_DIRECTIONS]

    def _cancel_when_too_fast(self, action: np.ndarray, state: ArmState) -> np.ndarray:
        qd = np.abs(np.asarray(state.joint_velocities, dtype=np.float64))
        limit = np.asarray(self.limits.max_joint_velocity) * self.config.velocity_scale
        if qd.shape != limit.shape or not np.any(qd > limit):
            return action
        action = action.copy()
        action[list(self._layout.motion)] = 0.0
        return action

    def _joint_target_stages(self, state: ArmState) -> tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]:
        """Joint-position targets are clipped directly: step from the current joints, the limits
        less the margin (from outside only motion back toward them passes), the velocity x period."""
        idx = list(self._layout.joints)
        q = np.asarray(state.joint_positions, dtype=np.float64)
        step = np.asarray(self.limits.max_step)
        lows, highs = self._joint_band()
        reach = np.asarray(self.limits.max_joint_velocity) * self.config.velocity_scale / self.arm.fps

        def with_joints(a: np.ndarray, targets: np.ndarray) -> np.ndarray:
            a = a.copy()
            a[idx] = targets
            return a

        def step_clip(a: np.ndarray) -> np.ndarray:
            a = np.clip(a, self._low, self._high)
            others = [i for i in range(len(a)) if i not in idx]
            a[others] = np.clip(a[others], -step[others], step[others])
            return with_joints(a, q + np.clip(a[idx] - q, -step[idx], step[idx]))

        return (
            ("step_clipped", step_clip),
            ("joint_limited", lambda a: with_joints(a, np.clip(a[idx], np.minimum(lows, q), np.maximum(highs, q))) if self.config.guard_joint_limits else a),
            ("velocity_limited", lambda a: with_joints(a, q + np.clip(a[idx] - q, -reach, reach))),
        )

    def _watchdog_tick(self, timeout: float) -> None:
        with self._lock:
            last = self._last_command
            if last is None or not self.arm.is_connected or time.monotonic() - last < timeout:
                return
            self._hold("watchdog_holds")

    def _start_watchdog(self) -> None:
        if self._watchdog_timeout is not None and self.arm.is_connected and self._watchdog is None:
            period = min(self._watchdog_timeout / 4, 1.0 / self.arm.fps)
            self._watchdog = _Watchdog(self, self._watchdog_timeout, period)
            self._watchdog.start()

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None


class _GuardTally:
    """One episode's commands and, per guard, how often it fired and where (its most frequent description)."""

    def __init__(self) -> None:
        self.commands = 0
        self.fired: dict[str, int] = {}
        self._where: dict[str, Counter[str]] = {}  # guard -> how often it acted on each joint / axis / entry
        self._text: dict[tuple[str, str], str] = {}  # (guard, where) -> its first description

    def add(self, where: Mapping[str, tuple[str, str]]) -> None:
        self.commands += 1
        for reason, (key, text) in where.items():
            self.fired[reason] = self.fired.get(reason, 0) + 1
            self._where.setdefault(reason, Counter())[key] += 1
            self._text.setdefault((reason, key), text)

    def dominant(self) -> list[tuple[str, str, str, int]]:
        """``(guard, where, description, count)`` for each guard that fired on most commands; ``where`` is the
        joint, axis or action entry it acted on most often, ``description`` its first reading and limit."""
        if self.commands < DOMINANT_MIN_COMMANDS:
            return []
        out = []
        for reason, count in self.fired.items():
            if count > DOMINANT_FRACTION * self.commands:
                key = self._where[reason].most_common(1)[0][0]
                out.append((reason, key, self._text[(reason, key)], count))
        return out


@dataclass(frozen=True)
class _Command:
    """What the safety layer remembers of the last command: the state it was sent in and its motion."""

    joints: np.ndarray  # (J,) joint positions when it was sent
    ee: np.ndarray  # (3,) end-effector position when it was sent
    motion: np.ndarray  # (M,) the applied motion entries (translation, rotation or joint targets)


class _Watchdog(threading.Thread):
    """Daemon thread that asks the robot to hold whenever its command stream went silent."""

    def __init__(self, robot: SafeRobot, timeout: float, period: float):
        super().__init__(name=f"watchdog-{robot.name}", daemon=True)
        self._robot, self._timeout, self._period = robot, timeout, period
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self._period):
            self._robot._watchdog_tick(self._timeout)

    def stop(self) -> None:
        self._stopped.set()
        if self is not threading.current_thread():
            self.join()


def _stamped(observation: Observation) -> Observation:
    """A copy of ``observation`` with ``"timestamp"`` = now on the monotonic clock."""
    stamped = dict(observation)
    stamped[TIMESTAMP] = np.float64(time.monotonic())
    return stamped


def _effective_limits(arm: Arm, config: SafetyConfig, size: int) -> ArmLimits:
    """The arm's declared limits narrowed by ``config``; errors name the arm and the mismatch."""
    limits = arm.limits
    if len(limits.max_step) != size:
        raise ValueError(
            f"arm {arm.name} declares {len(limits.max_step)} max_step entries for a {size}-D action; "
            "give one per dimension",
        )
    max_step = limits.max_step
    if config.max_step is not None:
        if len(config.max_step) != size:
            raise ValueError(
                f"SafetyConfig.max_step has {len(config.max_step)} entries but arm {arm.name}'s action is {size}-D",
            )
        max_step = tuple(min(a, b) for a, b in zip(limits.max_step, config.max_step))
    low, high = limits.workspace_low, limits.workspace_high
    if config.workspace_low is not None and config.workspace_high is not None:
        low = tuple(max(a, b) for a, b in zip(low, config.workspace_low))
        high = tuple(min(a, b) for a, b in zip(high, config.workspace_high))
        if any(lo >= hi for lo, hi in zip(low, high)):
            raise ValueError(
                f"SafetyConfig workspace {config.workspace_low}..{config.workspace_high} does not overlap arm "
                f"{arm.name}'s workspace {limits.workspace_low}..{limits.workspace_high}; pick a box inside it"
            )
    return dataclasses.replace(limits, workspace_low=low, workspace_high=high, max_step=max_step)
