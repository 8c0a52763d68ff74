"""A gamepad (Xbox / PlayStation style) through pygame's joystick events; headless (SDL dummy video driver).

Default layout (:class:`GamepadLayout`, SDL2 joystick numbering of an Xbox pad on
Linux): left stick moves in x/y, right stick up/down moves in z and left/right
turns about z, the d-pad turns about y (up/down) and x (left/right). Buttons:
A start / stop-and-keep, B discard, Y keep as success, X keep as failure,
LB takeover, left stick press pause/resume, RB toggles the gripper, Back quits. Pads that number their
controls differently take another :class:`GamepadLayout`.

:func:`apply_events` and :func:`gamepad_twist` are pure functions of a recorded
:class:`GamepadEvent` list; :class:`GamepadDevice` imports pygame only in
:meth:`~GamepadDevice.connect`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from hardware.teleop import (
    GRIPPER_OPEN,
    ActionMapping,
    DeviceUnavailable,
    TeleopCommand,
    TeleopEvent,
    missing_extra,
    toggled,
)
from robot.protocols import Observation


@dataclass(frozen=True)
class GamepadEvent:
    """One input event: an axis moved (value in [-1, 1]), a button went down/up, or a hat moved ((x, y) in {-1, 0, 1})."""

    kind: Literal["axis", "button_down", "button_up", "hat"]
    index: int
    value: float | tuple[int, int] = 0.0


@dataclass(frozen=True)
class GamepadLayout:
    """Which axis / button / hat number does what, and the stick deadzone."""

    left_x: int = 0
    left_y: int = 1
    right_x: int = 3
    right_y: int = 4
    dpad: int = 0
    buttons: Mapping[int, TeleopEvent] = field(
        default_factory=lambda: {
            0: TeleopEvent.START,  # A
            1: TeleopEvent.DISCARD,  # B
            2: TeleopEvent.FAILURE,  # X
            3: TeleopEvent.SUCCESS,  # Y
            4: TeleopEvent.TAKEOVER,  # LB
            6: TeleopEvent.QUIT,  # Back
            7: TeleopEvent.ESTOP,  # Start
            8: TeleopEvent.PAUSE,  # left stick press
        }
    )
    gripper_button: int = 5  # RB
    deadzone: float = 0.15

    def __post_init__(self) -> None:
        if not 0 <= self.deadzone < 1:
            raise ValueError(f"gamepad deadzone must be in [0, 1), got {self.deadzone}")
        if self.gripper_button in self.buttons:
            raise ValueError(f"gamepad button {self.gripper_button} is both the gripper toggle and {self.buttons[self.gripper_button].value}")


@dataclass(frozen=True)
class GamepadState:
    """Latest axis values and hat position, and the gripper command."""

    axes: Mapping[int, float] = field(default_factory=dict)
    hat: tuple[int, int] = (0, 0)
    gripper: float = GRIPPER_OPEN


def apply_events(state: GamepadState, events: Sequence[GamepadEvent], layout: GamepadLayout) -> tuple[GamepadState, frozenset[TeleopEvent]]:
    """Fold events (oldest first) into the state; return it with the episode events the buttons raised."""
    axes, hat, gripper = dict(state.axes), state.hat, state.gripper
    raised: set[TeleopEvent] = set()
    for event in events:
        if event.kind == "axis":
            axes[event.index] = float(event.value)  # type: ignore[arg-type]
        elif event.kind == "hat" and event.index == layout.dpad:
            x, y = event.value  # type: ignore[misc]
            hat = (int(x), int(y))
        elif event.kind == "button_down":
            if event.index == layout.gripper_button:
                gripper = toggled(gripper)
            elif event.index in layout.buttons:
                raised.add(layout.buttons[event.index])
    return GamepadState(axes, hat, gripper), frozenset(raised)


def gamepad_twist(state: GamepadState, layout: GamepadLayout) -> np.ndarray:
    """(6,) twist in the robot frame; stick values under the deadzone read as 0 (no drift at rest)."""

    def stick(index: int) -> float:
        v = float(np.clip(state.axes.get(index, 0.0), -1.0, 1.0))
        return float(np.sign(v) * max(abs(v) - layout.deadzone, 0.0) / (1.0 - layout.deadzone))

    # Stick axes grow rightward and downward: forward is -left_y, left is -left_x.
    return np.array(
        [-stick(layout.left_y), -stick(layout.left_x), -stick(layout.right_y), state.hat[0], state.hat[1], -stick(layout.right_x)],
        dtype=np.float64,
    )


class GamepadDevice:
    """The first (or ``index``-th) joystick pygame sees, as a :class:`~hardware.teleop.TeleopDevice`."""

    name = "gamepad"

    def __init__(self, mapping: ActionMapping, *, layout: GamepadLayout | None = None, index: int = 0, speed: float = 1.0):
        if not 0 < speed <= 1:
            raise ValueError(f"gamepad speed is a fraction of the max step in (0, 1], got {speed}")
        self.mapping, self.layout, self.index, self.speed = mapping, layout or GamepadLayout(), index, speed
        self._pygame: Any = None
        self._joystick: Any = None
        self._state = GamepadState()

    @property
    def controls(self) -> str:
        return (
            "gamepad  left stick x/y, right stick z and turn about z, d-pad turn about x/y, RB gripper; "
            "A start / stop+keep, Y keep as success, X keep as failure, B discard, LB takeover, left stick press pause, Back quit"
        )

    def connect(self) -> None:
        if self._joystick is not None:
            return
        try:
            import pygame
        except ImportError:
            raise missing_extra("gamepad", "pygame", "gamepad") from None
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # no display server needed
        os.environ.setdefault("SDL_JOYSTICK_ALLOW_BACKGROUND_EVENTS", "1")  # events without a focused window
        pygame.display.init()
        pygame.joystick.init()
        count = pygame.joystick.get_count()
        if count <= self.index:
            pygame.joystick.quit()
            raise DeviceUnavailable(
                f"no gamepad number {self.index} found ({count} connected); plug one in, and on Linux check that "
                "your user can read /dev/input/event* (group `input`)"
            )
        self._pygame = pygame
        self._joystick = pygame.joystick.Joystick(self.index)
        self._joystick.init()

    def close(self) -> None:
        if self._joystick is not None:
            self._joystick.quit()
            self._joystick = None
            self._pygame.joystick.quit()

    def reset(self) -> None:
        self._state = replace(self._state, gripper=GRIPPER_OPEN)

    def poll(self, observation: Observation) -> TeleopCommand:
        if self._joystick is None:
            raise RuntimeError("gamepad is not connected; call connect() first")
        self._state, events = apply_events(self._state, self._read_events(), self.layout)
        twist = gamepad_twist(self._state, self.layout) * self.speed
        return TeleopCommand(self.mapping.action(twist, self._state.gripper), events)

    def _read_events(self) -> list[GamepadEvent]:
        """This joystick's pending pygame events as :class:`GamepadEvent` (other joysticks' are dropped)."""
        pg, mine = self._pygame, self._joystick.get_instance_id()
        kinds = {pg.JOYAXISMOTION: "axis", pg.JOYBUTTONDOWN: "button_down", pg.JOYBUTTONUP: "button_up", pg.JOYHATMOTION: "hat"}
        out = []
        for e in pg.event.get(list(kinds)):
            if getattr(e, "instance_id", mine) != mine:
                continue
            kind = kinds[e.type]
            if kind == "axis":
                out.append(GamepadEvent("axis", e.axis, float(e.value)))
            elif kind == "hat":
                out.append(GamepadEvent("hat", e.hat, tuple(e.value)))
            else:
                out.append(GamepadEvent(kind, e.button))  # type: ignore[arg-type]
        return out
