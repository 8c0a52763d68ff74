"""Teleoperation devices: a person (or the scripted expert) turned into actions and episode-control events.

Every device is a :class:`TeleopDevice`. The recorder calls :meth:`~TeleopDevice.reset`
before each episode's reset phase and :meth:`~TeleopDevice.poll` once per control
tick; a poll returns a :class:`TeleopCommand`: an action in the robot's units (or
``None``: nothing to send this tick) and the episode-control events raised since
the last poll.

Human devices read their input as a normalised 6-D *twist* (x forward, y left,
z up, then rotations about x, y, z; each in [-1, 1], robot base frame, operator
standing behind the robot looking along +x) plus a gripper command (-1 open,
1 closed). :class:`ActionMapping` scales the twist by the action feature's max
step per dimension, so one device drives a planar task (x, y only) and a 7-D arm
task alike. Build devices by name with :func:`make_device`; backends that need
optional libraries import them only when connected.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from hardware.arm import ActionLayout
from robot.protocols import Observation
from robot.types import ACTION, Feature

DEVICES = ("keyboard", "spacemouse", "gamepad", "scripted")
GRIPPER_OPEN, GRIPPER_CLOSED = -1.0, 1.0


class TeleopEvent(str, Enum):
    """Episode control. One start/stop control is enough: the recorder reads START during
    an episode as KEEP, and KEEP in the reset phase as START."""

    START = "start"  # leave the reset phase and record the next episode
    KEEP = "keep"  # stop and keep; success label from the task's own check
    DISCARD = "discard"  # stop, drop the frames, redo the episode
    SUCCESS = "success"  # stop and keep, labelled success
    FAILURE = "failure"  # stop and keep, labelled failure
    QUIT = "quit"  # stop recording; episodes already kept stay
    TAKEOVER = "takeover"  # toggle: the operator's actions replace a policy's (see workflow.takeover.Takeover)
    ESTOP = "estop"  # latch the robot's e-stop (deployment); clearing it is a deliberate act on the robot side
    PAUSE = "pause"  # toggle: the robot holds and nothing is recorded until the operator resumes


@dataclass(frozen=True)
class TeleopCommand:
    """What a device says at one tick: an action ``(A,)`` in robot units, or None, and events."""

    action: np.ndarray | None = None
    events: frozenset[TeleopEvent] = field(default_factory=frozenset)


@runtime_checkable
class TeleopDevice(Protocol):
    """An input device driving a robot. ``controls`` is the help shown to the operator."""

    name: str

    @property
    def controls(self) -> str: ...

    def connect(self) -> None:
        """Open the device; raises :class:`DeviceUnavailable` naming the fix when it cannot."""
        ...

    def close(self) -> None:
        """Release the device (and restore the terminal); safe to call twice."""
        ...

    def reset(self) -> None:
        """Forget per-episode state (gripper open, expert restarted) before the next episode."""
        ...

    def poll(self, observation: Observation) -> TeleopCommand:
        """The command for this tick; never blocks."""
        ...


class DeviceUnavailable(RuntimeError):
    """A device that cannot be used here: its library is missing or no such device is plugged in."""


def missing_extra(device: str, module: str, extra: str) -> DeviceUnavailable:
    return DeviceUnavailable(
        f"the {device} device needs the Python package {module!r}, which is not installed; "
        f"install it with `pip install 'robot-workflow-kit[{extra}]'`"
    )


@dataclass(frozen=True)
class ActionMapping:
    """Normalised twist + gripper -> an action in the robot's units.

    ``scale[i]`` is the largest magnitude action entry ``i`` may take (the feature's
    bound, rounded toward zero in float32 so a full-scale command never exceeds it).
    """

    layout: ActionLayout
    scale: np.ndarray  # (A,) float32
    dtype: str = "float32"

    @staticmethod
    def from_feature(feature: Feature) -> "ActionMapping":
        layout = ActionLayout.ee_delta(feature)
        if feature.high is None or feature.low is None:
            raise ValueError(f"teleop needs the action's bounds (max step per entry), but the action feature {feature.describe()} declares none")
        bound = np.minimum(np.abs(np.asarray(feature.low, np.float64)), np.asarray(feature.high, np.float64))
        if np.any(bound[list(layout.motion)] <= 0):
            raise ValueError(f"teleop needs positive action bounds on every motion entry, got low={feature.low} high={feature.high}")
        scale = bound.astype(np.float32)
        too_big = scale.astype(np.float64) > bound
        scale[too_big] = np.nextafter(scale[too_big], np.float32(0))
        return ActionMapping(layout, scale, feature.dtype)

    @property
    def size(self) -> int:
        return self.layout.size

    @property
    def axes(self) -> tuple[int, ...]:
        """The twist entries this action uses: (0, 1) planar, (0, 1, 2) + (3, 4, 5) with rotation."""
        return (*range(len(self.layout.translation)), *range(3, 3 + len(self.layout.rotation)))

    @property
    def has_gripper(self) -> bool:
        return self.layout.gripper is not None

    def action(self, twist: np.ndarray, gripper: float = GRIPPER_OPEN) -> np.ndarray:
        """``twist`` (6,) in [-1, 1] -> action (A,): motion entries scaled, the gripper as given."""
        twist = np.clip(np.asarray(twist, np.float64).reshape(6), -1.0, 1.0)
        out = np.zeros(self.size, np.float64)
        for i, index in enumerate(self.layout.translation):
            out[index] = twist[i]
        for i, index in enumerate(self.layout.rotation):
            out[index] = twist[3 + i]
        out = (out * self.scale).astype(self.dtype)
        if self.layout.gripper is not None:
            out[self.layout.gripper] = gripper
        return out


def toggled(gripper: float) -> float:
    return GRIPPER_OPEN if gripper > 0 else GRIPPER_CLOSED


class WithKeyboardEvents:
    """A motion device (SpaceMouse, gamepad) whose episode-control events also come from the terminal.

    Motion and the device's own buttons come from ``device``; the keyboard adds
    its keys' events (discard, success/failure labels, quit), its motion keys are ignored.
    """

    def __init__(self, device: TeleopDevice, keyboard: TeleopDevice):
        self.device, self.keyboard = device, keyboard
        self.name = device.name

    @property
    def controls(self) -> str:
        return f"{self.device.controls}\n{self.keyboard.controls}"

    def connect(self) -> None:
        self.device.connect()
        try:
            self.keyboard.connect()
        except Exception:
            self.device.close()
            raise

    def close(self) -> None:
        try:
            self.keyboard.close()
        finally:
            self.device.close()

    def reset(self) -> None:
        self.device.reset()
        self.keyboard.reset()

    def poll(self, observation: Observation) -> TeleopCommand:
        command = self.device.poll(observation)
        return TeleopCommand(command.action, command.events | self.keyboard.poll(observation).events)


def make_device(
    name: str,
    *,
    action_features: Mapping[str, Feature],
    task: Any = None,
    noise: float = 0.0,
    seed: int | None = None,
    style: str = "iid",
    fd: int | None = None,
) -> TeleopDevice:
    """A device by name (one of :data:`DEVICES`), not yet connected.

    ``task`` is needed by ``scripted`` (a ``sim.scene.SceneTask``), and ``noise``, ``seed`` and
    ``style`` (``sim.scene.EXPERT_STYLES``) are its expert's; ``fd`` is the
    terminal the keyboard reads (default stdin). SpaceMouse and gamepad take their
    episode-control keys from the terminal too when stdin is one.
    """
    if name not in DEVICES:
        raise ValueError(f"unknown teleop device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "scripted":
        from hardware.teleop.scripted import ScriptedDevice

        return ScriptedDevice(task, noise=noise, seed=seed, style=style)
    feature = action_features.get(ACTION)
    if feature is None:
        raise ValueError(f"the robot declares no {ACTION!r} feature (it has {sorted(action_features)}); teleop has nothing to drive")
    mapping = ActionMapping.from_feature(feature)
    from hardware.teleop.keyboard import KeyboardDevice

    if name == "keyboard":
        return KeyboardDevice(mapping, fd=fd)
    if name == "spacemouse":
        from hardware.teleop.spacemouse import SpaceMouseDevice

        device: TeleopDevice = SpaceMouseDevice(mapping)
    else:
        from hardware.teleop.gamepad import GamepadDevice

        device = GamepadDevice(mapping)
    terminal = stdin_fd() if fd is None else fd
    if terminal is None or not os.isatty(terminal):
        return device
    return WithKeyboardEvents(device, KeyboardDevice(mapping, fd=terminal, motion=False))


def stdin_fd() -> int | None:
    """stdin's file descriptor, or None when stdin is replaced or closed."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced or closed stdin (pytest capture, daemons)
        return None


__all__ = [
    "DEVICES",
    "ActionMapping",
    "DeviceUnavailable",
    "TeleopCommand",
    "TeleopDevice",
    "TeleopEvent",
    "WithKeyboardEvents",
    "make_device",
]
