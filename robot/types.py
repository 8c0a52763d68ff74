"""Value types shared by every package of the kit.

Keys are flat dotted strings (``observation.state``, ``observation.images.front``,
``observation.pointcloud``, ``action``). A :class:`Feature` says what one key holds
per time step; a mapping ``key -> Feature`` is how robots, stores and policies
describe what they produce or need, so a mismatch can be named precisely.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import numpy as np

STATE = "observation.state"
POINTCLOUD = "observation.pointcloud"
IMAGES_PREFIX = "observation.images."
ACTION = "action"
REWARD = "reward"
DONE = "done"
SUCCESS = "success"
INTERVENTION = "intervention"
TIMESTAMP = "timestamp"

SOURCES = ("demo", "offline-rollout", "online-rollout", "deployment")


def image_key(camera: str) -> str:
    """``image_key("front") == "observation.images.front"``."""
    return IMAGES_PREFIX + camera


def is_image_key(key: str) -> bool:
    return key.startswith(IMAGES_PREFIX)


@dataclass(frozen=True)
class Feature:
    """What one key holds at one time step.

    Images are uint8 ``(H, W, 3)``; point clouds float32 ``(N, 3)``; vectors
    float32 ``(D,)``. ``names`` labels vector entries (``("x", "y", "gripper")``),
    ``low``/``high`` are physical limits when the producer knows them.
    """

    shape: tuple[int, ...]
    dtype: str = "float32"
    names: tuple[str, ...] | None = None
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if any(int(s) <= 0 for s in self.shape):
            raise ValueError(f"feature shape must be positive, got {self.shape}")
        np.dtype(self.dtype)  # raises TypeError on an unknown dtype
        if self.names is not None and len(self.shape) == 1 and len(self.names) != self.shape[0]:
            raise ValueError(f"{len(self.names)} names for a vector of size {self.shape[0]}")
        for bound in (self.low, self.high):
            if bound is not None and len(self.shape) == 1 and len(bound) != self.shape[0]:
                raise ValueError(f"bounds of length {len(bound)} for a vector of size {self.shape[0]}")

    def describe(self) -> str:
        """``float32 (7,)``, ``uint8 84x84x3`` or ``float32 scalar``."""
        if len(self.shape) == 0:
            return f"{self.dtype} scalar"
        dims = "x".join(str(s) for s in self.shape) if len(self.shape) > 1 else f"({self.shape[0]},)"
        return f"{self.dtype} {dims}"

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "Feature":
        """Inverse of :meth:`to_dict`; a malformed field is a ``ValueError`` naming it (``shape[0]: expected an integer``)."""
        from robot.config import from_dict

        return from_dict(Feature, d)


Features = Mapping[str, Feature]


def features_to_dict(features: Features) -> dict[str, dict[str, Any]]:
    return {k: f.to_dict() for k, f in features.items()}


def features_from_dict(d: Mapping[str, Mapping[str, Any]]) -> dict[str, Feature]:
    """Features from their JSON; a malformed one is a ``ValueError`` naming the key and field."""
    if not isinstance(d, Mapping):
        raise ValueError(f"features: expected a JSON object, got {type(d).__name__}")
    out = {}
    for k, v in d.items():
        try:
            out[k] = Feature.from_dict(v)
        except (TypeError, ValueError) as e:  # TypeError: numpy's unknown dtype
            raise ValueError(f"feature {k!r}: {e}") from None
    return out


def check_features(needed: Features, provided: Features, *, who_needs: str, who_provides: str) -> None:
    """Raise ``ValueError`` naming every key ``needed`` that ``provided`` lacks or shapes differently."""
    problems = []
    for key, feat in needed.items():
        have = provided.get(key)
        if have is None:
            problems.append(f"{key} ({feat.describe()}) is missing")
        elif tuple(have.shape) != tuple(feat.shape):
            problems.append(f"{key} is {have.describe()}, expected {feat.describe()}")
    if problems:
        offered = ", ".join(sorted(provided)) or "nothing"
        raise ValueError(
            f"{who_needs} does not fit {who_provides}: " + "; ".join(problems) + f" ({who_provides} provides {offered})"
        )


@dataclass(frozen=True)
class EpisodeMeta:
    """Per-episode metadata stored next to the frames."""

    task: str
    robot: str
    fps: float
    success: bool
    source: str = "demo"
    operator: str = ""
    seed: int | None = None
    device: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"episode source must be one of {SOURCES}, got {self.source!r}")
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["extra"] = dict(self.extra)
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> "EpisodeMeta":
        return EpisodeMeta(
            task=str(d["task"]),
            robot=str(d["robot"]),
            fps=float(d["fps"]),
            success=bool(d["success"]),
            source=str(d.get("source", "demo")),
            operator=str(d.get("operator", "")),
            seed=None if d.get("seed") is None else int(d["seed"]),
            device=str(d.get("device", "")),
            extra=dict(d.get("extra", {})),
        )


@dataclass(frozen=True)
class SafetyConfig:
    """How strict the safety layer is on top of the limits the arm declares.

    Lives here, not in ``hardware.safety``, so that a simulated task can bring its own (a scene's optional
    ``safety`` attribute, which ``hardware.registry.make_sim`` uses unless its caller passes one)."""

    workspace_low: tuple[float, float, float] | None = None
    """Lower corner (m, base frame) of a box that narrows the arm's declared workspace; never widens it."""
    workspace_high: tuple[float, float, float] | None = None
    """Upper corner of that box; give both corners or neither."""
    workspace_approach: float = 0.5
    """Fraction of the remaining distance to a workspace wall one command may cover: the arm brakes near walls."""
    max_step: tuple[float, ...] | None = None
    """Per action dimension bound on one command; the smaller of this and the arm's own applies."""
    joint_margin: float = 0.02
    """Fraction of each joint's range next to its limits inside which motion driving it further is cancelled."""
    guard_joint_limits: bool = True
    """Cancel motion that drives a joint into its limit (``joint_margin``); False leaves joint limits to the arm:
    for a simulated arm whose joint constraints hold them and which leans on a limit in normal work (Meta-World's
    mocap-driven Sawyer rests on ``right_j1``'s limit in 40-95% of its expert's steps)."""
    velocity_scale: float = 1.0
    """Fraction of the arm's max joint velocity above which motion commands are cancelled."""
    watchdog_timeout_s: float | None = None
    """Hold position whenever no command arrived for this long (s); None turns the watchdog off."""
    reject_nonfinite: bool = True
    """NaN/inf commands are never forwarded: True holds and counts, False raises ValueError (debugging)."""

    def __post_init__(self) -> None:
        if (self.workspace_low is None) != (self.workspace_high is None):
            raise ValueError("SafetyConfig: give workspace_low and workspace_high together, or neither")
        if self.workspace_low is not None and self.workspace_high is not None:
            if len(self.workspace_low) != 3 or len(self.workspace_high) != 3:
                raise ValueError(
                    f"SafetyConfig: workspace corners must be (x, y, z), "
                    f"got {self.workspace_low}, {self.workspace_high}",
                )
            if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
                raise ValueError(
                    f"SafetyConfig: workspace_low {self.workspace_low} must be below "
                    f"workspace_high {self.workspace_high}",
                )
        if self.max_step is not None and any(not s > 0 for s in self.max_step):
            raise ValueError(f"SafetyConfig: max_step entries must be positive, got {self.max_step}")
        if not 0 < self.workspace_approach <= 1:
            raise ValueError(f"SafetyConfig: workspace_approach must be in (0, 1], got {self.workspace_approach}")
        if not 0 <= self.joint_margin < 0.5:
            raise ValueError(
                f"SafetyConfig: joint_margin is a fraction of the joint range in [0, 0.5), got {self.joint_margin}",
            )
        if not 0 < self.velocity_scale <= 1:
            raise ValueError(f"SafetyConfig: velocity_scale must be in (0, 1], got {self.velocity_scale}")
        if self.watchdog_timeout_s is not None and not self.watchdog_timeout_s > 0:
            raise ValueError(
                f"SafetyConfig: watchdog_timeout_s must be positive or None, got {self.watchdog_timeout_s}",
            )


@dataclass
class SafetyCounters:
    """How often each intervention fired since construction or the last :meth:`reset`."""

    nonfinite: int = 0
    step_clipped: int = 0
    workspace_clipped: int = 0
    joint_limited: int = 0
    velocity_limited: int = 0
    watchdog_holds: int = 0
    estop_holds: int = 0

    def reset(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


@dataclass(frozen=True)
class ArmState:
    """Kinematic state the safety layer checks (base frame, SI units)."""

    ee_position: np.ndarray  # (3,) metres; planar scenes put z = fixed height
    joint_positions: np.ndarray  # (J,) radians or metres
    joint_velocities: np.ndarray  # (J,)


@dataclass(frozen=True)
class ArmLimits:
    """Physical limits a scene (or a real arm's driver) declares for its safety layer.

    ``workspace_low/high`` bound the end-effector position; ``max_step`` bounds
    each action dimension per command (metres, radians, gripper units);
    ``joint_low/high`` and ``max_joint_velocity`` are the arm's joint limits.
    """

    workspace_low: tuple[float, float, float]
    workspace_high: tuple[float, float, float]
    max_step: tuple[float, ...]
    joint_low: tuple[float, ...]
    joint_high: tuple[float, ...]
    max_joint_velocity: tuple[float, ...]

    def __post_init__(self) -> None:
        if any(lo >= hi for lo, hi in zip(self.workspace_low, self.workspace_high)):
            raise ValueError(f"workspace_low {self.workspace_low} must be below workspace_high {self.workspace_high}")
        if len(self.joint_low) != len(self.joint_high) or len(self.joint_low) != len(self.max_joint_velocity):
            raise ValueError("joint_low, joint_high and max_joint_velocity must have one entry per joint")
        if any(s <= 0 for s in self.max_step):
            raise ValueError(f"max_step entries must be positive, got {self.max_step}")
