"""Teleop devices without hardware: key bytes through a pseudo-terminal, recorded SpaceMouse
HID reports and gamepad events, the scripted expert, and clear errors for missing devices."""

from __future__ import annotations

import os
import pty
import select
import sys
import termios

import numpy as np
import pytest

from hardware.teleop import ActionMapping, DeviceUnavailable, TeleopCommand, TeleopDevice, TeleopEvent, make_device
from hardware.teleop.gamepad import GamepadDevice, GamepadEvent, GamepadLayout, GamepadState, apply_events, gamepad_twist
from hardware.teleop.keyboard import KeyboardDevice, KeyParser, keys_to_command
from hardware.teleop.spacemouse import FULL_SCALE, SpaceMouseDevice, SpaceMouseState, apply_report, spacemouse_twist
from robot.types import ACTION, Feature

M = 0.025
PLANAR_FEATURE = Feature((2,), names=("dx", "dy"), low=(-M, -M), high=(M, M))
PLANAR = ActionMapping.from_feature(PLANAR_FEATURE)
ARM_STEP = (0.05, 0.05, 0.05, 0.5, 0.5, 0.5, 2.0)
ARM = ActionMapping.from_feature(
    Feature((7,), names=("dx", "dy", "dz", "drx", "dry", "drz", "gripper"), low=tuple(-s for s in ARM_STEP), high=ARM_STEP)
)
E = TeleopEvent


# ------------------------------------------------------------------------------ mapping


def test_mapping_scales_twist_and_never_exceeds_the_bound_in_float32():
    full = PLANAR.action(np.array([1.0, -1.0, 1.0, 1.0, 1.0, 1.0]))
    assert full.dtype == np.float32 and full.shape == (2,)
    assert np.all(np.abs(full.astype(np.float64)) <= M) and np.allclose(full, [M, -M])
    arm = ARM.action(np.array([0.5, 0, 0, 0, 0, -1.0]), gripper=1.0)
    assert np.allclose(arm, [0.025, 0, 0, 0, 0, -0.5, 1.0])
    assert PLANAR.axes == (0, 1) and ARM.axes == (0, 1, 2, 3, 4, 5) and ARM.has_gripper and not PLANAR.has_gripper


def test_mapping_without_bounds_is_a_clear_error():
    with pytest.raises(ValueError, match="bounds"):
        ActionMapping.from_feature(Feature((2,), names=("dx", "dy")))


# ------------------------------------------------------------------------------ keyboard


def test_key_parser_handles_arrows_split_across_reads_and_named_keys():
    parser = KeyParser()
    assert parser.feed(b"wA \r\x1b[") == ["w", "a", "space", "enter"]
    assert parser.feed(b"Dq\x7f\x1b[1;5C\x1bx\x03") == ["left", "q", "backspace", "right", "esc", "x", "ctrl-c"]
    assert parser.feed(b"\x1b") == [] and parser.feed(b"OA") == ["up"]


def test_keys_map_to_planar_motion_gripper_and_events():
    command, gripper = keys_to_command(["w", "w", "a", "r", "u", "space"], PLANAR, -1.0)
    assert np.allclose(command.action, [M, M]) and command.events == frozenset()  # z, rotation, gripper unused
    command, gripper = keys_to_command(["d", "enter", "y", "x", "q", "t", "n"], PLANAR, gripper)
    assert np.allclose(command.action, [0, -M])
    assert command.events == {E.START, E.SUCCESS, E.DISCARD, E.QUIT, E.TAKEOVER, E.FAILURE}
    command, gripper = keys_to_command([], PLANAR, gripper)
    assert np.allclose(command.action, [0, 0]) and not command.events


def test_keys_drive_every_arm_axis_and_toggle_the_gripper():
    command, gripper = keys_to_command(["r", "j", "space", "s"], ARM, -1.0, speed=0.5)
    assert gripper == 1.0
    assert np.allclose(command.action, [-0.025, 0, 0.025, 0, 0, 0.25, 1.0])
    command, gripper = keys_to_command(["space", "k", "o"], ARM, gripper)
    assert gripper == -1.0 and np.allclose(command.action, [0, 0, 0, -0.5, -0.5, 0, -1.0])


@pytest.fixture
def terminal():
    """A pseudo-terminal: (master fd the test types into, slave fd the device reads)."""
    master, slave = pty.openpty()
    yield master, slave
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


def _type(master: int, slave: int, data: bytes) -> None:
    os.write(master, data)
    select.select([slave], [], [], 2.0)  # pty delivery is asynchronous


def test_keyboard_device_reads_a_pty_and_restores_the_terminal(terminal):
    master, slave = terminal
    before = termios.tcgetattr(slave)
    device = KeyboardDevice(PLANAR, fd=slave)
    assert isinstance(device, TeleopDevice)
    with pytest.raises(RuntimeError, match="boom"):
        with device:
            assert termios.tcgetattr(slave)[3] & termios.ICANON == 0  # cbreak: no line buffering
            _type(master, slave, b"ww\x1b[B\x1b[B\x1b[B")
            command = device.poll({})
            assert np.allclose(command.action, [-M, 0])  # two presses forward, three back: net one back
            raise RuntimeError("boom")
    assert termios.tcgetattr(slave) == before


def test_keyboard_reports_quit_when_the_terminal_hangs_up(terminal):
    master, slave = terminal
    with KeyboardDevice(PLANAR, fd=slave) as device:
        os.close(master)
        assert TeleopEvent.QUIT in device.poll({}).events


def test_keyboard_on_a_non_terminal_says_what_to_do():
    read, write = os.pipe()
    try:
        with pytest.raises(DeviceUnavailable, match="terminal.*--device scripted"):
            KeyboardDevice(PLANAR, fd=read).connect()
    finally:
        os.close(read)
        os.close(write)


# ------------------------------------------------------------------------------ SpaceMouse


def _int16(*values: int) -> bytes:
    return np.array(values, dtype="<i2").tobytes()


def test_spacemouse_reports_from_a_recording():
    state = SpaceMouseState()
    # SpaceNavigator: report 1 translation, report 2 rotation (HID frame: x right, y toward you, z down)
    state, events = apply_report(state, b"\x01" + _int16(350, -175, 0))
    state, _ = apply_report(state, b"\x02" + _int16(0, 0, 350))
    assert state.translation == (350, -175, 0) and state.rotation == (0, 0, 350) and not events
    twist = spacemouse_twist(state, deadzone=0.0)
    assert np.allclose(twist, [0.5, -1.0, 0, 0, 0, -1.0])  # pushed away: +x; pushed right: -y; twisted clockwise: -rz
    # SpaceMouse Wireless: one 13-byte report with all six axes; other report ids are ignored
    state, _ = apply_report(state, b"\x01" + _int16(0, 0, -350, 35, 0, 0))
    state, _ = apply_report(state, b"\x17\x64")
    assert state.translation == (0, 0, -350) and state.rotation == (35, 0, 0)
    assert np.allclose(spacemouse_twist(state, deadzone=0.1), [0, 0, 1.0, 0, -0.0, 0])  # lifted: +z; 10 % tilt in the deadzone


def test_spacemouse_deadzone_is_continuous():
    state = SpaceMouseState(translation=(0, int(-0.55 * FULL_SCALE), 0))
    assert spacemouse_twist(state, deadzone=0.1)[0] == pytest.approx(0.5, abs=0.01)


def test_spacemouse_buttons_toggle_gripper_and_start_on_press_only():
    state = SpaceMouseState()
    state, events = apply_report(state, b"\x03\x01\x00")  # left down
    assert state.gripper == 1.0 and not events
    state, events = apply_report(state, b"\x03\x03\x00")  # right down, left held
    assert state.gripper == 1.0 and events == {E.START}
    state, events = apply_report(state, b"\x03\x00\x00")  # both released
    assert state.gripper == 1.0 and not events
    state, _ = apply_report(state, b"\x03\x01\x00")
    assert state.gripper == -1.0


class _FakeHid:
    """Stand-in for the ``hid`` module (hidapi API) replaying recorded reports."""

    def __init__(self, reports: list[bytes], devices: list[dict] | None = None):
        self.reports = list(reports)
        self.devices = devices if devices is not None else [{"vendor_id": 0x256F, "product_id": 0xC635, "path": b"/dev/hidraw3", "usage_page": 1, "usage": 8}]
        fake = self

        class device:  # noqa: N801 - hidapi's class name
            def open_path(self, path):
                assert path == b"/dev/hidraw3"

            def set_nonblocking(self, flag):
                pass

            def read(self, size):
                return list(fake.reports.pop(0)) if fake.reports else []

            def close(self):
                pass

        self.device = device

    def enumerate(self):
        return self.devices


def test_spacemouse_device_on_recorded_reports(monkeypatch):
    fake = _FakeHid([b"\x01" + _int16(0, -350, 0, 0, 0, 0), b"\x03\x02\x00"])
    monkeypatch.setitem(sys.modules, "hid", fake)
    with_mouse = SpaceMouseDevice(ARM)
    with_mouse.connect()
    command = with_mouse.poll({})
    assert np.allclose(command.action, [0.05, 0, 0, 0, 0, 0, -1.0]) and command.events == {E.START}
    with_mouse.close()


def test_missing_spacemouse_library_or_device_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "hid", None)  # import hid -> ImportError
    with pytest.raises(DeviceUnavailable, match=r"pip install 'robot-workflow-kit\[spacemouse\]'"):
        SpaceMouseDevice(PLANAR).connect()
    monkeypatch.setitem(sys.modules, "hid", _FakeHid([], devices=[{"vendor_id": 0x046D, "product_id": 0xC52B, "path": b"x"}]))
    with pytest.raises(DeviceUnavailable, match="no SpaceMouse found"):
        SpaceMouseDevice(PLANAR).connect()


# ------------------------------------------------------------------------------ gamepad


def test_gamepad_events_from_a_recording():
    layout = GamepadLayout()
    recorded = [
        GamepadEvent("axis", 1, -1.0),  # left stick fully up
        GamepadEvent("axis", 0, 0.1),  # left stick drifting right, inside the deadzone
        GamepadEvent("axis", 4, 0.575),  # right stick half down
        GamepadEvent("hat", 0, (1, -1)),
        GamepadEvent("button_down", 5),  # RB: gripper
        GamepadEvent("button_up", 5),
        GamepadEvent("button_down", 0),  # A: start
        GamepadEvent("button_down", 4),  # LB: takeover
        GamepadEvent("button_down", 9),  # unmapped
    ]
    state, events = apply_events(GamepadState(), recorded, layout)
    assert events == {E.START, E.TAKEOVER} and state.gripper == 1.0
    assert np.allclose(gamepad_twist(state, layout), [1.0, 0, -0.5, 1, -1, 0])
    state, events = apply_events(state, [GamepadEvent("button_down", 3), GamepadEvent("button_down", 6), GamepadEvent("axis", 1, 0.0)], layout)
    assert events == {E.SUCCESS, E.QUIT} and gamepad_twist(state, layout)[0] == 0.0
    command = TeleopCommand(PLANAR.action(gamepad_twist(state, layout)), events)
    assert np.allclose(command.action, [0, 0])


def test_missing_gamepad_library_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygame", None)
    with pytest.raises(DeviceUnavailable, match=r"pip install 'robot-workflow-kit\[gamepad\]'"):
        GamepadDevice(PLANAR).connect()


# ------------------------------------------------------------------------------ scripted and the factory


def test_scripted_device_starts_drives_and_stops_on_success():
    from hardware.registry import make_sim

    robot, task = make_sim("push")
    device = make_device("scripted", action_features=robot.action_features, task=task, seed=0)
    with robot:
        observation = robot.reset(3)
        device.connect()
        device.reset()
        assert device.poll(observation).events == {E.START}
        for _ in range(task.max_steps):
            command = device.poll(observation)
            if command.events:
                break
            robot.send_action(command.action)
            observation = robot.get_observation()
        assert command.events == {E.SUCCESS} and task.scene.is_success()
    robot.close()


def test_device_factory_errors_name_the_fix():
    with pytest.raises(ValueError, match="keyboard, spacemouse, gamepad, scripted"):
        make_device("joystick", action_features={})
    with pytest.raises(ValueError, match="simulated task"):
        make_device("scripted", action_features={}, task=object())
    with pytest.raises(ValueError, match="declares no 'action'"):
        make_device("keyboard", action_features={"observation.state": Feature((2,))})
    assert make_device("keyboard", action_features={ACTION: PLANAR_FEATURE}).name == "keyboard"

