"""Any gymnasium env as a kit task: ``--task gym:<env-id>`` on every command, or :func:`gym_task` in code.

:class:`GymScene` puts a ``gymnasium.Env`` behind the :class:`sim.scene.SimScene` contract, so
``hardware.registry.make_sim`` wraps it in the safety layer like every other task. How the env
becomes a task:

- **observation**: a ``Box`` becomes ``observation.state`` (float32, flattened; entries named by
  ``state_names`` or ``s0 s1 ...``). A ``Dict`` is concatenated, in the Dict's key order, into one
  ``observation.state`` whose entries are named ``<key>.<i>`` (the kit's encoders, normaliser and viewer
  all read ``observation.state``), except image-shaped uint8 ``(H, W, 3)`` entries, which become
  ``observation.images.<key>``. Other spaces are refused with the fix (a gymnasium ObservationWrapper).
- **action**: a bounded ``Box``; the kit's action is the env's times ``action_scale`` (env units to
  the kit's metres and radians: a Meta-World unit is 1 cm), its bounds scaled alike. Entries are named
  ``action_names`` or ``a0 a1 ...``. Names that spell ``dx dy dz [drx dry drz] [gripper]`` make it an
  end-effector delta arm for the safety layer (workspace box, joint guards when the scene reports
  joints); other names are bounded entry by entry (``hardware.arm.ActionLayout`` ``direct``).
- **reward and success**: terms ``reward`` (the env's reward) and ``success`` (1 while the last step's
  ``info["success"]`` or ``info["is_success"]`` holds), times ``reward_scales``. Once the env terminates or truncates it
  stands still (no more env steps, success as it last was) until the kit's episode ends.
- **episodes**: ``reset(seed)`` is ``env.reset(seed=seed)``; ``max_steps`` and ``fps`` default to the env's
  ``spec.max_episode_steps`` and ``metadata["render_fps"]`` (else ``1 / env.dt``).
- **cameras**: a MuJoCo env (``env.unwrapped`` has ``model``/``data``) renders any named camera of its
  model and point clouds through :class:`sim.cameras.CameraRig`; any other env renders one camera,
  ``render`` (the env built with ``render_mode="rgb_array"``), resized to the asked size.
- **expert**: an optional callable ``expert(env_observation) -> env_action`` (with ``reset()`` if it
  keeps state), seen by the kit as a :class:`sim.scene.ScriptedExpert` (``--device scripted``).

Safety: a scene may carry ``safety`` (a :class:`robot.types.SafetyConfig`) that ``make_sim`` uses
unless its caller passes one; pass ``safety=`` to :func:`gym_task` for an env whose arm needs it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robot.protocols import Observation
from robot.types import ACTION, STATE, ArmLimits, ArmState, Feature, SafetyConfig, image_key
from sim.scene import ScriptedExpert

if TYPE_CHECKING:
    from sim.cameras import CameraConfig

REWARD_TERMS = ("reward", "success")
SUCCESS_KEYS = ("success", "is_success")
RENDER_CAMERA = "render"
"""The camera name of a non-MuJoCo env's own renderer (``observation.images.render``)."""

ExpertCallable = Callable[[Any], np.ndarray]
"""``expert(env_observation) -> env_action``, in the env's own units; may have ``reset()``."""


def _default_reward_scales() -> dict[str, float]:
    return {"reward": 1.0, "success": 0.0}


@dataclass(frozen=True)
class GymTaskConfig:
    """How one gymnasium env becomes a task of the kit (every field also a scene option: ``max_steps=50``)."""

    max_steps: int | None = None
    """Episode length in control steps; None: the env's ``spec.max_episode_steps``."""
    fps: float | None = None
    """Control rate; None: the env's ``metadata["render_fps"]``, else ``1 / env.dt``."""
    action_scale: float | tuple[float, ...] = 1.0
    """Kit action = env action x this (one factor, or one per entry): env units to metres / radians."""
    action_names: tuple[str, ...] | None = None
    """Names of the action entries; ``dx dy dz [drx dry drz] [gripper]`` marks an end-effector delta arm."""
    state_names: tuple[str, ...] | None = None
    """Names of the ``observation.state`` entries; None: ``s0 s1 ...`` (a Box) or ``<key>.<i>`` (a Dict)."""
    reward_scales: Mapping[str, float] = field(default_factory=_default_reward_scales)
    """Scale of each reward term: ``reward`` (the env's) and ``success`` (1 while the env reports success)."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make`` (an id) or the env factory."""
    robot_name: str = "gym"
    """What the scene calls its robot (``robot tasks``, episode metadata)."""
    safety: SafetyConfig | None = None
    """The task's own safety limits (``make_sim`` uses them unless its caller passes some); None: the default."""

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"GymTaskConfig.max_steps must be positive, got {self.max_steps}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"GymTaskConfig.fps must be positive, got {self.fps}")
        scale = np.atleast_1d(np.asarray(self.action_scale, dtype=np.float64))
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError(f"GymTaskConfig.action_scale must be positive and finite, got {self.action_scale}")
        unknown = sorted(set(self.reward_scales) - set(REWARD_TERMS))
        if unknown:
            raise ValueError(f"GymTaskConfig.reward_scales names unknown terms {unknown}; terms are {REWARD_TERMS}")
        if self.safety is not None and not isinstance(self.safety, SafetyConfig):
            raise ValueError(f"GymTaskConfig.safety must be a robot.types.SafetyConfig, got {type(self.safety).__name__}")


class GymScene:
    """A gymnasium env behind the :class:`sim.scene.SimScene` contract (see the module's docstring).

    Subclasses that know the env's arm (:mod:`sim.metaworld_scene`) override :meth:`arm_state`,
    :meth:`_arm_limits`, :meth:`_reset_env` and :meth:`_expert_policy`; the base has no joints and an
    unbounded workspace, so only the action bounds, NaN rejection, the watchdog and the e-stop apply.
    """

    def __init__(
        self,
        env: gym.Env,
        config: GymTaskConfig = GymTaskConfig(),
        *,
        name: str = "gym",
        camera: CameraConfig | None = None,
        expert: ExpertCallable | None = None,
    ):
        self.env = env
        self.config = config
        self.name = name
        self.robot_name = config.robot_name
        self.safety = config.safety
        self._expert = expert
        try:
            self.max_steps = int(config.max_steps or _spec_steps(env, name))
            self.fps = float(config.fps or _env_fps(env, name))
            self._obs_layout = _ObservationLayout.of(env.observation_space, config.state_names, name)
            self._action = _ActionMap.of(env.action_space, config.action_scale, config.action_names, name)
            self._limits = self._arm_limits()
            self._rig: Any = None
            self._render_size: tuple[int, int] | None = None
            if camera is not None:
                self._open_cameras(camera)
        except BaseException:
            env.close()
            raise
        self._raw: Any = None  # the env's latest observation
        self._info: dict[str, Any] = {}
        self._reward = 0.0
        self._ended = False  # the env terminated or truncated: it stands still until the next reset

    # ---- features and limits ---------------------------------------------------

    @property
    def observation_features(self) -> Mapping[str, Feature]:
        features = dict(self._obs_layout.features())
        if self._rig is not None:
            features.update(self._rig.features())
        elif self._render_size is not None:
            h, w = self._render_size
            features[image_key(RENDER_CAMERA)] = Feature((h, w, 3), "uint8", names=("height", "width", "channel"))
        return features

    @property
    def action_features(self) -> Mapping[str, Feature]:
        return {ACTION: self._action.feature}

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras the ``camera`` option can render: a MuJoCo env's named cameras, else ``render``."""
        model = _mujoco_model(self.env)
        if model is not None:
            from sim.cameras import model_cameras

            return model_cameras(model[0])
        return (RENDER_CAMERA,) if "rgb_array" in (self.env.metadata or {}).get("render_modes", ()) else ()

    @property
    def limits(self) -> ArmLimits:
        return self._limits

    @property
    def reward_scales(self) -> Mapping[str, float]:
        return {**_default_reward_scales(), **self.config.reward_scales}

    def _arm_limits(self) -> ArmLimits:
        """No arm known: an unbounded workspace, the action bounds as the max step, no joints."""
        inf = float("inf")
        return ArmLimits((-inf,) * 3, (inf,) * 3, self._action.max_step(), (), (), ())

    # ---- control -----------------------------------------------------------------

    def reset(self, seed: int) -> None:
        """A new episode that depends only on ``seed``."""
        self._raw, info = self._reset_env(int(seed))
        self._info = dict(info or {})
        self._reward, self._ended = 0.0, False

    def _reset_env(self, seed: int) -> tuple[Any, dict[str, Any]]:
        self.env.action_space.seed(seed)
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> None:
        """The kit's action in env units (divided by ``action_scale``, clipped to the env's bounds), one env step."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self._action.size,) or not np.all(np.isfinite(a)):
            raise ValueError(f"scene {self.name} expects a finite {self._action.size}-vector {self._action.feature.names}, got {action!r}")
        if self._ended:
            self._reward = 0.0
            return
        raw, reward, terminated, truncated, info = self.env.step(self._action.to_env(a))
        self._raw, self._reward, self._info = raw, float(reward), dict(info or {})
        self._ended = bool(terminated or truncated)

    # ---- observation -------------------------------------------------------------

    def observe(self) -> Observation:
        obs = self._obs_layout.convert(self._raw)
        if self._rig is not None:
            import mujoco

            model, data = _mujoco_model(self.env)  # type: ignore[misc]
            mujoco.mj_forward(model, data)  # poses of the last substep, for the cameras
            obs.update(self._rig.render())
        elif self._render_size is not None:
            obs[image_key(RENDER_CAMERA)] = self._rendered()
        return obs

    def arm_state(self) -> ArmState:
        """No arm known: the end effector at the origin, no joints (the unbounded box never clips it)."""
        return ArmState(np.zeros(3), np.zeros(0), np.zeros(0))

    @property
    def env_observation(self) -> Any:
        """The env's latest observation as the env returned it (what an expert callable reads)."""
        return self._raw

    @property
    def info(self) -> Mapping[str, Any]:
        """The ``info`` of the last reset or step."""
        return self._info

    def reward_terms(self, applied_action: np.ndarray) -> dict[str, float]:
        return {"reward": self._reward, "success": float(self.is_success())}

    def is_success(self) -> bool:
        return any(bool(self._info.get(key, False)) for key in SUCCESS_KEYS)

    def expert(self, noise: float = 0.0, seed: int | None = None, style: str = "iid") -> ScriptedExpert:
        policy = self._expert_policy()
        if policy is None:
            raise NotImplementedError(f"task {self.name} has no scripted expert; pass expert=callable(env_observation) -> env_action to sim.gym_task.gym_task")
        if style != "iid":
            raise ValueError(f"task {self.name}'s expert has only the iid style (noise); got style {style!r}")
        return GymExpert(self, policy, noise, seed)

    def _expert_policy(self) -> ExpertCallable | None:
        return self._expert

    def to_kit_action(self, env_action: np.ndarray) -> np.ndarray:
        """An env action (clipped to the env's bounds) in the kit's units, float32."""
        return self._action.to_kit(env_action)

    def close(self) -> None:
        if self._rig is not None:
            self._rig.close()
            self._rig = None
        self.env.close()

    # ---- cameras -----------------------------------------------------------------

    def _open_cameras(self, camera: CameraConfig) -> None:
        model = _mujoco_model(self.env)
        if model is not None:
            from sim.cameras import CameraConfig as Config, CameraRig

            cloud = camera.pointcloud
            if cloud is not None and (cloud.camera is None or cloud.crop_low is None or cloud.crop_high is None):
                cloud = cloud.with_defaults(*self._pointcloud_defaults())
            self._rig = CameraRig.from_config(model[0], model[1], Config(camera.cameras, camera.height, camera.width, cloud))
            return
        if camera.pointcloud is not None or camera.cameras != (RENDER_CAMERA,):
            raise ValueError(f"task {self.name}: a non-MuJoCo gymnasium env renders one camera, {RENDER_CAMERA!r} (its rgb_array), "
                             f"and no point cloud; got cameras {camera.cameras}{' and a point cloud' if camera.pointcloud else ''}")  # fmt: skip
        if self.env.render_mode != "rgb_array":
            raise ValueError(f"task {self.name}: camera {RENDER_CAMERA!r} needs the env built with render_mode='rgb_array' "
                             f"(it has {self.env.render_mode!r}); pass a gymnasium id or a factory, which the kit builds so")  # fmt: skip
        self._render_size = (camera.height, camera.width)

    def _pointcloud_defaults(self) -> tuple[str, tuple[float, float, float], tuple[float, float, float]]:
        """The point cloud's default camera and crop box: the first camera and the arm's workspace."""
        from sim.cameras import model_cameras

        low, high = np.asarray(self._limits.workspace_low), np.asarray(self._limits.workspace_high)
        cameras = model_cameras(_mujoco_model(self.env)[0])  # type: ignore[index]
        if not cameras or not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
            raise ValueError(f"task {self.name}: give the point cloud a camera and a crop box, "
                             "PointCloudConfig(camera=..., crop_low=(x, y, z), crop_high=(x, y, z))")  # fmt: skip
        return cameras[0], (float(low[0]), float(low[1]), float(low[2])), (float(high[0]), float(high[1]), float(high[2]))

    def _rendered(self) -> np.ndarray:
        import cv2

        frame = np.asarray(self.env.render())
        if frame.ndim != 3 or frame.shape[2] < 3:
            raise ValueError(f"task {self.name}: env.render() gave shape {frame.shape}, not an (H, W, 3) rgb_array")
        h, w = self._render_size  # type: ignore[misc]
        frame = np.ascontiguousarray(frame[:, :, :3]).astype(np.uint8)
        return frame if frame.shape[:2] == (h, w) else cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)


class GymExpert:
    """An expert callable on the env's own observation, as a :class:`sim.scene.ScriptedExpert`: its action in
    the kit's units, plus Gaussian noise of std ``noise`` x half the action range on every entry but the gripper."""

    def __init__(self, scene: GymScene, policy: ExpertCallable, noise: float = 0.0, seed: int | None = None):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"expert noise must be in [0, 1], got {noise}")
        self.scene, self.policy, self.noise = scene, policy, float(noise)
        self._rng = np.random.default_rng(seed)
        feature = scene.action_features[ACTION]
        self._low, self._high = np.asarray(feature.low, np.float64), np.asarray(feature.high, np.float64)
        self._std = self.noise * (self._high - self._low) / 2
        names = tuple(n.lower() for n in feature.names or ())
        if "gripper" in names:
            self._std[names.index("gripper")] = 0.0

    def reset(self) -> None:
        reset = getattr(self.policy, "reset", None)
        if callable(reset):
            reset()

    def act(self, observation: Observation) -> np.ndarray:
        with warnings.catch_warnings():  # Meta-World's experts warn on every step that their gains saturate
            warnings.simplefilter("ignore")
            env_action = self.policy(self.scene.env_observation)
        action = self.scene.to_kit_action(np.asarray(env_action, dtype=np.float64))
        if self.noise > 0:
            action = np.clip(action + self._rng.normal(0.0, 1.0, action.shape) * self._std, self._low, self._high)
        return action.astype(np.float32)


# ------------------------------------------------------------------------------ building


def make_gym_scene(
    env: str | gym.Env | Callable[..., gym.Env],
    *,
    name: str | None = None,
    camera: CameraConfig | None = None,
    expert: ExpertCallable | None = None,
    config: GymTaskConfig | None = None,
    **options: Any,
) -> GymScene:
    """A :class:`GymScene` over ``env``: a gymnasium id (built with ``gymnasium.make``), a factory
    (``factory(render_mode=..., **env_kwargs)``), or an env instance (used as it is: only one scene can
    own it). ``options`` replace :class:`GymTaskConfig` fields."""
    config = _with_options(config or GymTaskConfig(), options, name or str(env))
    render_mode = "rgb_array" if camera is not None else None
    if isinstance(env, str):
        built = _make_by_id(env, render_mode, config.max_steps, config.env_kwargs)
    elif isinstance(env, gym.Env):
        built = env
    elif callable(env):
        built = env(**({"render_mode": render_mode} if render_mode else {}), **dict(config.env_kwargs))
        if not isinstance(built, gym.Env):
            raise TypeError(f"gym task {name or env!r}: the factory returned {type(built).__name__}, not a gymnasium.Env")
    else:
        raise TypeError(f"gym task {name!r}: env must be a gymnasium id, a gymnasium.Env or a factory, got {type(env).__name__}")
    return GymScene(built, config, name=name or f"gym:{env if isinstance(env, str) else type(built.unwrapped).__name__}", camera=camera, expert=expert)


def gym_task(env: str | Callable[..., gym.Env], *, expert: ExpertCallable | None = None, **config_fields: Any) -> Callable[..., GymScene]:
    """A task factory for :func:`sim.registry.register_task` (or an entry point) over a gymnasium id or env
    factory: ``register_task("reach", gym_task(make_reach_env, expert=reach_expert, action_names=("dx", "dy")))``.
    ``config_fields`` are :class:`GymTaskConfig` fields; the scene options of each build override them."""
    if isinstance(env, gym.Env):
        raise TypeError("gym_task needs a gymnasium id or a factory (a task builds a fresh env for every robot); "
                        "wrap an env instance as make_gym_scene(env) instead")  # fmt: skip
    base = _with_options(GymTaskConfig(), config_fields, str(env))

    def factory(camera: CameraConfig | None = None, **options: Any) -> GymScene:
        return make_gym_scene(env, camera=camera, expert=expert, config=base, **options)

    return factory


def gym_family(env_id: str) -> Callable[..., GymScene]:
    """The factory of ``gym:<env-id>``: any id ``gymnasium.make`` knows (``gym:Pendulum-v1``, ``gym:module:Env-v0``)."""
    if not env_id:
        raise ValueError("task 'gym:' names no env; write gym:<env-id>, e.g. gym:Pendulum-v1 (any id gymnasium.make knows)")
    _check_id(env_id)
    return gym_task(env_id)


# ------------------------------------------------------------------------------ internals


def _with_options(config: GymTaskConfig, options: Mapping[str, Any], who: str) -> GymTaskConfig:
    known = {f.name for f in fields(GymTaskConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"gym task {who}: unknown options {unknown}; options are the GymTaskConfig fields {sorted(known)}")
    for key in ("action_names", "state_names"):  # the command line and JSON give lists
        if isinstance(options.get(key), list):
            options = {**options, key: tuple(options[key])}
    return replace(config, **options) if options else config


def _check_id(env_id: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error as e:
        raise ValueError(f"task 'gym:{env_id}': {e} (gymnasium knows {len(gym.registry)} ids; a package's own ids need "
                         "gym:<module>:<env-id> so gymnasium imports it first)") from None  # fmt: skip


def _make_by_id(env_id: str, render_mode: str | None, max_steps: int | None, kwargs: Mapping[str, Any]) -> gym.Env:
    _check_id(env_id)
    extra: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}
    if max_steps is not None:  # the env's TimeLimit truncates where the kit's episode ends
        extra["max_episode_steps"] = max_steps
    try:
        return gym.make(env_id, **extra, **dict(kwargs))
    except gym.error.DependencyNotInstalled as e:
        raise ValueError(f"task 'gym:{env_id}': {e}") from None


def _spec_steps(env: gym.Env, name: str) -> int:
    steps = getattr(env.spec, "max_episode_steps", None) if env.spec is not None else None
    if not steps:
        raise ValueError(f"task {name}: the env declares no max_episode_steps; give max_steps=<steps per episode>")
    return int(steps)


def _env_fps(env: gym.Env, name: str) -> float:
    fps = (env.metadata or {}).get("render_fps")
    if fps:
        return float(fps)
    dt = getattr(env.unwrapped, "dt", None)
    if dt:
        return 1.0 / float(dt)
    raise ValueError(f"task {name}: the env declares neither metadata['render_fps'] nor dt; give fps=<control rate in Hz>")


def _mujoco_model(env: gym.Env) -> tuple[Any, Any] | None:
    """``(MjModel, MjData)`` of a MuJoCo env, else None (mujoco is imported only when the env has both)."""
    model, data = getattr(env.unwrapped, "model", None), getattr(env.unwrapped, "data", None)
    if model is None or data is None:
        return None
    import mujoco

    return (model, data) if isinstance(model, mujoco.MjModel) and isinstance(data, mujoco.MjData) else None


@dataclass(frozen=True)
class _ObservationLayout:
    """Which parts of an env observation make ``observation.state`` and which are images."""

    vectors: tuple[tuple[str | None, int], ...]  # (Dict key or None for a Box, size) in order
    images: tuple[tuple[str, tuple[int, ...]], ...]  # (Dict key, (H, W, 3))
    names: tuple[str, ...]

    @staticmethod
    def of(space: spaces.Space, state_names: tuple[str, ...] | None, who: str) -> "_ObservationLayout":
        if isinstance(space, spaces.Box):
            vectors: list[tuple[str | None, int]] = [(None, int(np.prod(space.shape)))]
            images: list[tuple[str, tuple[int, ...]]] = []
            default = tuple(f"s{i}" for i in range(vectors[0][1]))
        elif isinstance(space, spaces.Dict):
            vectors, images, default_list = [], [], []
            for key, sub in space.spaces.items():
                if not isinstance(sub, spaces.Box):
                    raise ValueError(f"task {who}: observation entry {key!r} is a {type(sub).__name__}; only Box entries become "
                                     "features: wrap the env in a gymnasium ObservationWrapper that makes it a Box")  # fmt: skip
                if sub.dtype == np.uint8 and len(sub.shape) == 3 and sub.shape[2] == 3:
                    images.append((str(key), tuple(int(s) for s in sub.shape)))
                    continue
                size = int(np.prod(sub.shape))
                vectors.append((str(key), size))
                default_list += [str(key)] if size == 1 else [f"{key}.{i}" for i in range(size)]
            default = tuple(default_list)
        else:
            raise ValueError(f"task {who}: observation space {space} is neither a Box nor a Dict of Boxes; wrap the env in a "
                             "gymnasium ObservationWrapper (e.g. FlattenObservation) first")  # fmt: skip
        size = sum(n for _, n in vectors)
        if state_names is not None and len(state_names) != size:
            raise ValueError(f"task {who}: {len(state_names)} state_names for an observation.state of {size} entries")
        return _ObservationLayout(tuple(vectors), tuple(images), tuple(state_names) if state_names is not None else default)

    def features(self) -> dict[str, Feature]:
        out: dict[str, Feature] = {}
        if self.names:
            out[STATE] = Feature((len(self.names),), "float32", names=self.names)
        for key, shape in self.images:
            out[image_key(key)] = Feature(shape, "uint8", names=("height", "width", "channel"))
        return out

    def convert(self, raw: Any) -> Observation:
        obs: Observation = {}
        if self.names:
            parts = [np.asarray(raw if key is None else raw[key], dtype=np.float32).reshape(-1) for key, _ in self.vectors]
            obs[STATE] = np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        for key, _ in self.images:
            obs[image_key(key)] = np.asarray(raw[key], dtype=np.uint8).copy()
        return obs


@dataclass(frozen=True)
class _ActionMap:
    """The env's Box action space seen in the kit's units."""

    low: np.ndarray  # (D,) env units
    high: np.ndarray
    scale: np.ndarray  # (D,) kit = env x scale
    feature: Feature

    @property
    def size(self) -> int:
        return int(self.low.shape[0])

    @staticmethod
    def of(space: spaces.Space, scale: float | tuple[float, ...], names: tuple[str, ...] | None, who: str) -> "_ActionMap":
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"task {who}: action space {space} is not a 1-D Box; the kit sends float vectors "
                             "(wrap a Discrete env in a gymnasium ActionWrapper that takes a Box)")  # fmt: skip
        low, high = np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
        size = low.shape[0]
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"task {who}: action space {space} is unbounded; the safety layer needs bounds: wrap the env in "
                             "gymnasium.wrappers.ClipAction or RescaleAction with finite bounds")  # fmt: skip
        factors = np.broadcast_to(np.asarray(scale, np.float64), (size,)).copy() if np.ndim(scale) == 0 or len(scale) == size else None  # type: ignore[arg-type]
        if factors is None:
            raise ValueError(f"task {who}: action_scale has {len(scale)} entries for a {size}-D action; give one or {size}")  # type: ignore[arg-type]
        if names is not None and len(names) != size:
            raise ValueError(f"task {who}: {len(names)} action_names for a {size}-D action")
        names = tuple(names) if names is not None else tuple(f"a{i}" for i in range(size))
        feature = Feature((size,), "float32", names=names, low=tuple(float(v) for v in low * factors),
                          high=tuple(float(v) for v in high * factors))  # fmt: skip
        return _ActionMap(low, high, factors, feature)

    def max_step(self) -> tuple[float, ...]:
        """The largest magnitude each entry can take, in kit units (what one command may do)."""
        return tuple(float(v) for v in np.maximum(np.abs(self.low), np.abs(self.high)) * self.scale)

    def to_env(self, action: np.ndarray) -> np.ndarray:
        return np.clip(action / self.scale, self.low, self.high).astype(np.float32)

    def to_kit(self, env_action: np.ndarray) -> np.ndarray:
        return (np.clip(np.asarray(env_action, np.float64).reshape(-1), self.low, self.high) * self.scale).astype(np.float32)
