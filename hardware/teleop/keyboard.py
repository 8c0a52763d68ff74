"""The terminal keyboard: raw key bytes from a tty, so it works over SSH and without a display server.

A terminal sends no key-up events, only a key's bytes again at the auto-repeat
rate while it is held. So each key press since the last poll counts as one unit
of motion along its axis; the sum per axis is clipped to [-1, 1] and scaled to
the action's max step. Holding a key (auto-repeat is faster than the control
rate) moves at full speed; tapping nudges.

Parsing is pure (:class:`KeyParser`, :func:`keys_to_command`) so tests feed
bytes; :class:`KeyboardDevice` puts the terminal in cbreak mode (no echo, no line
buffering, Ctrl-C still interrupts) and restores it on :meth:`~KeyboardDevice.close`,
which its context manager and the recorder call even when an exception unwinds.
"""

from __future__ import annotations

import os
import select
import termios
import tty
from typing import Any, Sequence

import numpy as np

from hardware.teleop import (
    GRIPPER_OPEN,
    ActionMapping,
    DeviceUnavailable,
    TeleopCommand,
    TeleopEvent,
    stdin_fd,
    toggled,
)
from robot.protocols import Observation

# key -> (twist entry, direction): x forward, y left, z up, then rotations about x, y, z
MOTION_KEYS: dict[str, tuple[int, float]] = {
    "w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0), "f": (2, -1.0),
    "up": (0, 1.0), "down": (0, -1.0), "left": (1, 1.0), "right": (1, -1.0),
    "u": (3, 1.0), "o": (3, -1.0), "i": (4, 1.0), "k": (4, -1.0), "j": (5, 1.0), "l": (5, -1.0),
}  # fmt: skip
GRIPPER_KEY = "space"
EVENT_KEYS: dict[str, TeleopEvent] = {
    "enter": TeleopEvent.START,
    "y": TeleopEvent.SUCCESS,
    "n": TeleopEvent.FAILURE,
    "x": TeleopEvent.DISCARD,
    "backspace": TeleopEvent.DISCARD,
    "t": TeleopEvent.TAKEOVER,
    "p": TeleopEvent.PAUSE,
    "q": TeleopEvent.QUIT,
    "e": TeleopEvent.ESTOP,
    "esc": TeleopEvent.ESTOP,
}
_NAMED_BYTES = {0x0D: "enter", 0x0A: "enter", 0x20: "space", 0x7F: "backspace", 0x08: "backspace", 0x09: "tab"}
_ARROWS = {"A": "up", "B": "down", "C": "right", "D": "left"}
_MAX_READ = 4096


class KeyParser:
    """Terminal bytes -> key names (``"w"``, ``"enter"``, ``"up"``...), lower-cased.

    An escape sequence split across reads is completed by the next :meth:`feed`;
    a lone ESC followed by anything else is the ``"esc"`` key. Unknown sequences
    and non-ASCII bytes are dropped.
    """

    def __init__(self) -> None:
        self._pending = b""

    def feed(self, data: bytes) -> list[str]:
        buf, keys, i = self._pending + data, [], 0
        self._pending = b""
        while i < len(buf):
            byte = buf[i]
            if byte == 0x1B:
                if i + 1 == len(buf):
                    self._pending = buf[i:]
                    break
                if buf[i + 1] not in b"[O":
                    keys.append("esc")
                    i += 1
                    continue
                end = i + 2  # CSI/SS3: parameter bytes, then one final byte in 0x40..0x7e
                while end < len(buf) and not 0x40 <= buf[end] <= 0x7E:
                    end += 1
                if end == len(buf):
                    self._pending = buf[i:]
                    break
                final = chr(buf[end])
                if final in _ARROWS:
                    keys.append(_ARROWS[final])
                i = end + 1
                continue
            if byte == 0x03:
                keys.append("ctrl-c")
            elif byte in _NAMED_BYTES:
                keys.append(_NAMED_BYTES[byte])
            elif 0x21 <= byte <= 0x7E:
                keys.append(chr(byte).lower())
            i += 1
        return keys


def keys_to_command(
    keys: Sequence[str], mapping: ActionMapping, gripper: float, *, speed: float = 1.0, motion: bool = True
) -> tuple[TeleopCommand, float]:
    """The command for the keys pressed since the last tick, and the new gripper state.

    Returns an action every tick (zero motion when no key was pressed) unless
    ``motion`` is False (an events-only keyboard beside another device).
    """
    twist = np.zeros(6)
    events: set[TeleopEvent] = set()
    for key in keys:
        if key in MOTION_KEYS:
            axis, sign = MOTION_KEYS[key]
            twist[axis] += sign
        elif key == GRIPPER_KEY:
            gripper = toggled(gripper)
        elif key in EVENT_KEYS:
            events.add(EVENT_KEYS[key])
        elif key == "ctrl-c":
            events.add(TeleopEvent.QUIT)
    action = mapping.action(np.clip(twist, -1.0, 1.0) * speed, gripper) if motion else None
    return TeleopCommand(action, frozenset(events)), gripper


def controls_text(mapping: ActionMapping, motion: bool = True) -> str:
    """The key help for this action layout (planar tasks list only the x/y keys)."""
    lines = []
    if motion:
        moves = ["w/s or up/down: x", "a/d or left/right: y"]
        if 2 in mapping.axes:
            moves.append("r/f: z")
        if 3 in mapping.axes:
            moves.append("u/o, i/k, j/l: rotate about x, y, z")
        if mapping.has_gripper:
            moves.append("space: toggle gripper")
        lines.append("keys  move: " + ", ".join(moves))
    lines.append(
        "keys  episode: enter start / stop+keep (task decides success), y stop+keep as success, "
        "n stop+keep as failure, x or backspace discard+redo, t takeover, p pause/resume, e or esc e-stop, q quit (kept episodes stay)"
    )
    return "\n".join(lines)


class KeyboardDevice:
    """Keys from a terminal file descriptor (default: stdin) as a :class:`TeleopDevice`."""

    name = "keyboard"

    def __init__(self, mapping: ActionMapping, fd: int | None = None, *, speed: float = 1.0, motion: bool = True):
        if not 0 < speed <= 1:
            raise ValueError(f"keyboard speed is a fraction of the max step in (0, 1], got {speed}")
        self.mapping = mapping
        self.speed = speed
        self.motion = motion
        self._fd = fd
        self._saved: list[Any] | None = None
        self._parser = KeyParser()
        self._gripper = GRIPPER_OPEN

    @property
    def controls(self) -> str:
        return controls_text(self.mapping, self.motion)

    def connect(self) -> None:
        if self._saved is not None:
            return
        fd = self._fd if self._fd is not None else stdin_fd()
        if fd is None or not os.isatty(fd):
            raise DeviceUnavailable(
                "the keyboard device reads keys from a terminal, but its input is not one; "
                "run `robot record` in a terminal (over SSH use `ssh -t`) or record headless with --device scripted"
            )
        self._fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)

    def close(self) -> None:
        if self._saved is not None and self._fd is not None:
            saved, self._saved = self._saved, None
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
            except termios.error:
                pass  # the terminal is gone (closed pty, hung-up SSH): nothing left to restore

    def __enter__(self) -> "KeyboardDevice":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        self._gripper = GRIPPER_OPEN

    def poll(self, observation: Observation) -> TeleopCommand:
        if self._saved is None or self._fd is None:
            raise RuntimeError("keyboard device is not connected; call connect() first (or use `with device:`)")
        data, closed = _read_available(self._fd)
        command, self._gripper = keys_to_command(self._parser.feed(data), self.mapping, self._gripper, speed=self.speed, motion=self.motion)
        if closed:  # the terminal hung up: the operator is gone
            return TeleopCommand(command.action, command.events | {TeleopEvent.QUIT})
        return command


def _read_available(fd: int) -> tuple[bytes, bool]:
    """Every byte waiting on ``fd`` without blocking, and whether the terminal reached end of input."""
    chunks = []
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, _MAX_READ)
        except OSError:  # EIO: the other end of the pty closed
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        if len(chunk) < _MAX_READ:
            break
    return b"".join(chunks), False
