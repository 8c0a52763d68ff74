"""3Dconnexion SpaceMouse over raw HID (``hidapi``; no 3Dconnexion driver needed).

The device sends input reports: id 1 = translation (x, y, z) as little-endian
int16 at bytes 1..6 (newer models: rotation too, at bytes 7..12), id 2 = rotation
(rx, ry, rz) at bytes 1..6, id 3 = button bitmask. Counts reach about +-350 at
full deflection. The HID frame is x right, y toward the operator, z down, so the
robot frame (operator behind the robot: x forward, y left, z up) is
``(-y, -x, -z)`` for translation and rotation alike.

:func:`apply_report` and :func:`spacemouse_twist` are pure (tested on recorded
report bytes); :class:`SpaceMouseDevice` imports ``hid`` only in :meth:`~SpaceMouseDevice.connect`.
Buttons: left toggles the gripper, right is start / stop-and-keep.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

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

FULL_SCALE = 350.0  # counts at full deflection
VENDOR_3DCONNEXION = 0x256F
VENDOR_LOGITECH = 0x046D  # older 3Dconnexion models: product ids 0xc603..0xc62f
LEFT_BUTTON, RIGHT_BUTTON = 0, 1
_REPORT_SIZE = 64
_MAX_REPORTS_PER_POLL = 256


@dataclass(frozen=True)
class SpaceMouseState:
    """The latest raw readings (HID frame counts), the button bitmask and the gripper command."""

    translation: tuple[int, int, int] = (0, 0, 0)
    rotation: tuple[int, int, int] = (0, 0, 0)
    buttons: int = 0
    gripper: float = GRIPPER_OPEN


def _int16s(report: bytes, start: int) -> tuple[int, int, int]:
    values = np.frombuffer(report[start : start + 6], dtype="<i2")
    return int(values[0]), int(values[1]), int(values[2])


def apply_report(state: SpaceMouseState, report: bytes | Sequence[int]) -> tuple[SpaceMouseState, frozenset[TeleopEvent]]:
    """Fold one raw HID input report (report id first) into the state; return the events it raised.

    Unknown report ids (battery, LEDs) and short reports leave the state as it was.
    """
    data = bytes(report)
    if len(data) >= 7 and data[0] == 1:
        rotation = _int16s(data, 7) if len(data) >= 13 else state.rotation
        return replace(state, translation=_int16s(data, 1), rotation=rotation), frozenset()
    if len(data) >= 7 and data[0] == 2:
        return replace(state, rotation=_int16s(data, 1)), frozenset()
    if len(data) >= 2 and data[0] == 3:
        buttons = int.from_bytes(data[1:], "little")
        pressed = buttons & ~state.buttons
        gripper = toggled(state.gripper) if pressed >> LEFT_BUTTON & 1 else state.gripper
        events = frozenset({TeleopEvent.START}) if pressed >> RIGHT_BUTTON & 1 else frozenset()
        return replace(state, buttons=buttons, gripper=gripper), events
    return state, frozenset()


def spacemouse_twist(state: SpaceMouseState, deadzone: float = 0.1) -> np.ndarray:
    """(6,) twist in the robot frame, each entry in [-1, 1]; deflections under ``deadzone`` read as 0.

    Past the deadzone the response restarts from 0, so there is no jump at its edge.
    """
    raw = np.array([*state.translation, *state.rotation], dtype=np.float64) / FULL_SCALE
    hid_to_robot = [1, 0, 2]  # robot (x, y, z) = -(hid y, hid x, hid z), per triple
    robot = -np.concatenate([raw[:3][hid_to_robot], raw[3:][hid_to_robot]])
    robot = np.clip(robot, -1.0, 1.0)
    magnitude = np.maximum(np.abs(robot) - deadzone, 0.0) / (1.0 - deadzone)
    return np.sign(robot) * magnitude


class SpaceMouseDevice:
    """A SpaceMouse as a :class:`~hardware.teleop.TeleopDevice` (first one found, or the HID ``path`` given)."""

    name = "spacemouse"

    def __init__(self, mapping: ActionMapping, *, deadzone: float = 0.1, speed: float = 1.0, path: bytes | None = None):
        if not 0 <= deadzone < 1:
            raise ValueError(f"SpaceMouse deadzone is a fraction of full deflection in [0, 1), got {deadzone}")
        if not 0 < speed <= 1:
            raise ValueError(f"SpaceMouse speed is a fraction of the max step in (0, 1], got {speed}")
        self.mapping, self.deadzone, self.speed, self.path = mapping, deadzone, speed, path
        self._device: Any = None
        self._state = SpaceMouseState()

    @property
    def controls(self) -> str:
        return (
            "spacemouse  push / tilt the cap to move (you stand behind the robot, facing +x); "
            "left button toggles the gripper, right button start / stop+keep"
        )

    def connect(self) -> None:
        if self._device is not None:
            return
        try:
            import hid
        except ImportError:
            raise missing_extra("spacemouse", "hidapi", "spacemouse") from None
        path = self.path or _find_spacemouse(hid)
        self._device = _open(hid, path)

    def close(self) -> None:
        if self._device is not None:
            device, self._device = self._device, None
            device.close()

    def reset(self) -> None:
        self._state = replace(self._state, gripper=GRIPPER_OPEN)

    def poll(self, observation: Observation) -> TeleopCommand:
        if self._device is None:
            raise RuntimeError("SpaceMouse is not connected; call connect() first")
        events: set[TeleopEvent] = set()
        for _ in range(_MAX_REPORTS_PER_POLL):
            report = bytes(self._device.read(_REPORT_SIZE))
            if not report:
                break
            self._state, raised = apply_report(self._state, report)
            events |= raised
        twist = spacemouse_twist(self._state, self.deadzone) * self.speed
        return TeleopCommand(self.mapping.action(twist, self._state.gripper), frozenset(events))


def _is_spacemouse(info: dict[str, Any]) -> bool:
    vendor, product = info.get("vendor_id"), info.get("product_id", 0)
    return vendor == VENDOR_3DCONNEXION or (vendor == VENDOR_LOGITECH and 0xC603 <= product <= 0xC62F)


def _find_spacemouse(hid: Any) -> bytes:
    found = [info for info in hid.enumerate() if _is_spacemouse(info)]
    if not found:
        raise DeviceUnavailable(
            "no SpaceMouse found among the HID devices; plug it in (or its receiver), and on Linux give your user "
            "read access to /dev/hidraw* with a udev rule for vendor 256f / 046d"
        )
    multi_axis = [info for info in found if info.get("usage_page") == 1 and info.get("usage") == 8]
    return (multi_axis or found)[0]["path"]


class _HidReader:
    """One non-blocking read() over both Python HID bindings: ``hidapi`` (hid.device) and ``hid`` (hid.Device)."""

    def __init__(self, hid: Any, path: bytes):
        if hasattr(hid, "device"):
            self._handle = hid.device()
            self._handle.open_path(path)
            self._handle.set_nonblocking(1)
        else:
            self._handle = hid.Device(path=path)
            self._handle.nonblocking = True

    def read(self, size: int) -> bytes:
        return bytes(self._handle.read(size) or b"")

    def close(self) -> None:
        self._handle.close()


def _open(hid: Any, path: bytes) -> _HidReader:
    try:
        return _HidReader(hid, path)
    except Exception as e:  # hidapi raises OSError, the ctypes `hid` package its own HIDException
        raise DeviceUnavailable(
            f"cannot open the SpaceMouse at HID path {path!r} ({e}); close other programs using it (3DxWare, spacenavd) "
            "and on Linux check the permissions of /dev/hidraw*"
        ) from None
