"""Gymnasium view of a robot and a task, for RL libraries and vectorised rollouts.

:class:`RobotEnv` works over any ``robot.protocols.Robot`` (so the safety layer
stays in the loop) and any ``robot.protocols.Task``. Observations are a
``Dict`` space keyed by the kit's flat keys (``observation.state``,
``observation.images.top``...) without the timestamp; vectors are float32,
images uint8. :func:`make_env` and :func:`make_vector_env` build them from a
task name in ``sim.registry``.
"""

from __future__ import annotations

import functools
import multiprocessing
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robot.protocols import Robot, Task
from robot.types import ACTION, Feature, is_image_key

ObsDict = dict[str, np.ndarray]


class RobotEnv(gym.Env[ObsDict, np.ndarray]):
    """A robot doing a task, as a ``gymnasium.Env``; the env takes the robot over (``close()`` closes it).

    ``step`` returns the task's reward (the sum of its scaled terms), terminates
    on success, truncates after ``task.max_steps`` and reports in ``info`` the
    reward terms, success, the action really applied and the safety
    interventions that fired.
    """

    def __init__(self, robot: Robot, task: Task, render_mode: str | None = None):
        self.robot = robot
        self.task = task
        features = dict(robot.observation_features)
        self.observation_space = spaces.Dict({key: _space(key, f) for key, f in features.items()})
        self.action_space = _action_space(robot)
        self._cameras = [key for key in features if is_image_key(key)]
        self.metadata = {"render_modes": ["rgb_array"] if self._cameras else [], "render_fps": float(task.fps)}
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not offered by robot {robot.name} "
                f"(modes: {self.metadata['render_modes']}); give the scene a camera to render rgb_array"
            )
        self.render_mode = render_mode
        self._steps = 0
        self._last: ObsDict | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsDict, dict[str, Any]]:
        """Reseed the env's generator, then reset the robot from ``seed`` (or a seed drawn from it)."""
        super().reset(seed=seed)
        if not self.robot.is_connected:
            self.robot.connect()
        robot_seed = int(seed) if seed is not None else int(self.np_random.integers(2**31 - 1))
        self._steps = 0
        observation = self._observation(self.robot.reset(robot_seed))
        return observation, {"seed": robot_seed}

    def step(self, action: np.ndarray) -> tuple[ObsDict, float, bool, bool, dict[str, Any]]:
        applied = self.robot.send_action(np.asarray(action))  # the safety layer checks shape and dtype
        raw = self.robot.get_observation()
        outcome = self.task.evaluate(raw, applied)
        self._steps += 1
        info = {
            "reward_terms": dict(outcome.terms),
            "success": bool(outcome.success),
            "applied_action": np.array(applied, dtype=self.action_space.dtype),
            "interventions": tuple(getattr(self.robot, "last_interventions", ())),
        }
        truncated = self._steps >= self.task.max_steps
        return self._observation(raw), float(outcome.reward), bool(outcome.success), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """``rgb_array``: the latest frame of the first camera, uint8 ``(H, W, 3)``."""
        if self.render_mode != "rgb_array" or self._last is None:
            return None
        return self._last[self._cameras[0]].copy()

    def close(self) -> None:
        close = getattr(self.robot, "close", None)
        if callable(close):
            close()
        elif self.robot.is_connected:
            self.robot.disconnect()

    def _observation(self, raw: Mapping[str, np.ndarray]) -> ObsDict:
        """Fresh arrays of the space's dtypes, keyed as the space (the timestamp dropped)."""
        self._last = {key: np.array(raw[key], dtype=space.dtype) for key, space in self.observation_space.items()}
        return {key: value.copy() for key, value in self._last.items()}


def _space(key: str, feature: Feature) -> spaces.Box:
    if is_image_key(key):
        return spaces.Box(0, 255, shape=tuple(feature.shape), dtype=np.uint8)
    shape = tuple(feature.shape)
    low = np.broadcast_to(np.asarray(-np.inf if feature.low is None else feature.low, np.float32), shape)
    high = np.broadcast_to(np.asarray(np.inf if feature.high is None else feature.high, np.float32), shape)
    return spaces.Box(low, high, dtype=np.float32)


def _action_space(robot: Robot) -> spaces.Box:
    feature = robot.action_features.get(ACTION)
    if feature is None or feature.low is None or feature.high is None:
        raise ValueError(
            f"robot {robot.name}'s {ACTION!r} feature ({feature.describe() if feature else 'missing'}) "
            "has no low/high; RobotEnv needs bounds for its action Box: declare them in the scene's or driver's action_features"
        )
    return spaces.Box(np.asarray(feature.low, np.float32), np.asarray(feature.high, np.float32), dtype=np.float32)


def make_env(task: str, *, render_mode: str | None = None, **opts: Any) -> RobotEnv:
    """A :class:`RobotEnv` over the simulated ``task`` behind the safety layer.

    ``opts`` go to ``hardware.registry.make_sim`` (``safety=SafetyConfig(...)`` and scene options).
    """
    from hardware.registry import make_sim

    robot, sim_task = make_sim(task, **opts)
    return RobotEnv(robot, sim_task, render_mode=render_mode)


def make_vector_env(task: str, num_envs: int, *, context: str | None = None, **opts: Any) -> gym.vector.AsyncVectorEnv:
    """``num_envs`` copies of :func:`make_env` in worker processes (gymnasium's ``AsyncVectorEnv``).

    Workers start with ``context`` (default ``forkserver`` where available, else
    ``spawn``: never ``fork``, which breaks MuJoCo rendering and zarr readers).
    ``reset(seed=s)`` seeds worker ``i`` with ``s + i``.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be at least 1, got {num_envs}")
    if context is None:
        context = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    if context == "fork":
        raise ValueError(
            "context='fork' is not supported (MuJoCo/EGL and zarr break in forked workers); "
            "use 'spawn' or 'forkserver'",
        )
    factory = functools.partial(make_env, task, **opts)
    return gym.vector.AsyncVectorEnv([factory] * num_envs, context=context)
