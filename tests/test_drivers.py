"""Real-arm drivers over their MuJoCo-backed vendor stand-ins: conformance, closed-loop success,
clear errors (unreachable host, faults, missing state names, missing SDK) and units."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import socket
import threading

import numpy as np
import pytest

from hardware.conformance import CHECKS, check_robot
from hardware.drivers.contract import ArmFaultError, ArmUnreachableError, import_sdk
from hardware.drivers.signals import SignalSource, StateLayout
from hardware.registry import open_robot
from robot.types import STATE, image_key

KINDS = ("ur5e", "franka", "xarm")


def _close(robot) -> None:
    robot.close()
    assert not robot.is_connected


@pytest.mark.parametrize("kind", KINDS)
def test_every_driver_passes_the_conformance_check_over_its_standin(kind: str) -> None:
    robot, task = open_robot(f"{kind}:standin:push")
    try:
        report = check_robot(robot)
    finally:
        _close(robot)
    assert report.passed == CHECKS and report.robot == f"{kind}:standin:push"
    assert report.counters["nonfinite"] == 2 and report.counters["watchdog_holds"] > 0
    assert task is not None and task.name == "push"


def _commands_sent(robot) -> int:
    """How many motion commands reached the stand-in through the vendor API."""
    sdk = robot.arm.sdk
    return {"ur5e": lambda: sdk.servo_commands, "franka": lambda: sdk.motions, "xarm": lambda: len(sdk.sent_poses)}[
        robot.arm.name
    ]()


@pytest.mark.parametrize("kind", KINDS)
def test_the_push_expert_succeeds_through_each_driver(kind: str) -> None:
    """The scene's expert drives the arm through driver -> vendor API -> stand-in -> physics, and the
    driver's observation (vendor-measured pusher + tracked block) equals the scene's own, step by step."""
    robot, task = open_robot(f"{kind}:standin:push")
    scene = task.scene
    expert = scene.expert(noise=0.0, seed=0)
    successes, sent = 0, 0
    try:
        with robot:
            for seed in range(3):
                obs = robot.reset(seed)
                expert.reset()
                for _ in range(scene.max_steps):
                    np.testing.assert_allclose(obs[STATE], scene.observe()[STATE], atol=1e-5)
                    applied = robot.send_action(expert.act(obs))
                    sent += 1
                    obs = robot.get_observation()
                    if task.evaluate(obs, applied).success:
                        successes += 1
                        break
            assert _commands_sent(robot) == sent
    finally:
        _close(robot)
    assert successes == 3


@pytest.mark.slow
def test_the_lift_expert_succeeds_through_the_franka_driver() -> None:
    robot, task = open_robot("franka:standin:lift")
    scene = task.scene
    expert = scene.expert(noise=0.0, seed=0)
    successes = 0
    try:
        with robot:
            assert robot.observation_features[STATE].names == scene.observation_features[STATE].names
            for seed in range(2):
                obs = robot.reset(seed)
                expert.reset()
                for _ in range(scene.max_steps):
                    np.testing.assert_allclose(obs[STATE], scene.observe()[STATE], atol=1e-3)
                    applied = robot.send_action(expert.act(obs))
                    obs = robot.get_observation()
                    if task.evaluate(obs, applied).success:
                        successes += 1
                        break
    finally:
        _close(robot)
    assert successes == 2


@pytest.mark.parametrize("kind", KINDS)
def test_an_unreachable_host_is_a_clear_error(kind: str) -> None:
    robot, _ = open_robot(f"{kind}:standin:push")
    try:
        arm = robot.arm
        elsewhere = type(arm)(dataclasses.replace(arm.config, host="10.9.9.9", state_names=None), sdk=arm.sdk)
        with pytest.raises(ArmUnreachableError, match=r"10\.9\.9\.9.*could not") as error:
            elsewhere.connect()
        assert "check" in str(error.value).lower() and not elsewhere.is_connected
    finally:
        _close(robot)


def test_a_real_arm_spec_never_reaches_the_stand_ins() -> None:
    """The production path (a host) builds the driver over the vendor's own SDK: no stand-in module is even
    imported; only the ``standin`` spec reaches them (its own module, hardware.standins.cell)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from hardware.drivers.contract import ArmUnreachableError\n"
            "from hardware.registry import open_robot\n"
            "for kind in ('ur5e', 'franka', 'xarm'):\n"
            "    try:\n"
            "        open_robot(kind + ':10.9.9.9')\n"
            "    except Exception as e:\n"
            "        pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('hardware.standins')))\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def _fault_cases():
    yield "ur5e", lambda sdk: sdk.trigger_protective_stop(), r"safety mode 3 \(PROTECTIVE_STOP\).*recover\(\)"
    yield "franka", lambda sdk: sdk.inject_reflex("cartesian_reflex"), r"libfranka errors cartesian_reflex.*recover\(\)"
    yield "xarm", lambda sdk: sdk.raise_error(31), r"controller error 31 \(collision caused abnormal current\).*recover"


@pytest.mark.parametrize("kind, inject, message", list(_fault_cases()))
def test_a_faulted_arm_is_a_clear_error_until_recovered(kind: str, inject, message: str) -> None:
    robot, _ = open_robot(f"{kind}:standin:push")
    try:
        with robot:
            robot.reset(0)
            inject(robot.arm.sdk)
            before = robot.arm_state().ee_position.copy()
            with pytest.raises(ArmFaultError, match=message):
                robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
            robot.estop()  # holding a faulted arm sends nothing and does not raise
            robot.clear_estop()
            np.testing.assert_allclose(robot.arm_state().ee_position, before, atol=1e-9)
            robot.arm.recover()
            robot.reset(0)
            start = robot.arm_state().ee_position.copy()
            robot.send_action(np.array([0.02, 0.0], dtype=np.float32))
            assert robot.arm_state().ee_position[0] > start[0] + 0.005
    finally:
        _close(robot)


def test_an_emergency_stop_is_named_and_not_cleared_by_software() -> None:
    robot, _ = open_robot("ur5e:standin:push")
    try:
        with robot:
            robot.reset(0)
            robot.arm.sdk.press_emergency_stop()
            with pytest.raises(ArmFaultError, match=r"ROBOT_EMERGENCY_STOP.*release the emergency stop button"):
                robot.send_action(np.zeros(2, dtype=np.float32))
            with pytest.raises(ArmFaultError, match="could not clear"):
                robot.arm.recover()
            robot.arm.sdk.release_emergency_stop()
            robot.arm.recover()
            robot.send_action(np.zeros(2, dtype=np.float32))
    finally:
        _close(robot)


def test_a_fault_present_at_connect_refuses_the_connection() -> None:
    robot, _ = open_robot("xarm:standin:push")
    try:
        robot.arm.sdk.raise_error(1)
        with pytest.raises(ArmFaultError, match=r"controller error 1 \(emergency stop button.*release the emergency"):
            robot.connect()
        assert not robot.is_connected
    finally:
        _close(robot)


def test_a_state_name_nothing_publishes_is_a_clear_error() -> None:
    with pytest.raises(ValueError) as error:
        open_robot("ur5e:standin:push", state_names=("pusher_x", "block_x", "cube_z"))
    text = str(error.value)
    assert "cube_z" in text and "ur5e publishes eef_x" in text and "scene-tracker publishes block_x" in text
    assert "state_aliases" in text


def test_a_real_arm_spec_checks_state_names_before_touching_the_arm() -> None:
    with pytest.raises(ValueError, match=r"needs block_x, which nothing publishes \(xarm publishes eef_x"):
        open_robot("xarm:10.0.0.2", state_names=("pusher_x", "block_x"))


class _UserTracker:
    """A user's object tracker (motion capture, fiducials...): any object with these five members."""

    name = "mocap"
    signal_names = ("block_x", "block_y")

    def __init__(self) -> None:
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def read(self) -> dict[str, float]:
        assert self.connected
        return {"block_x": 0.1, "block_y": -0.05}


def test_a_user_tracker_fills_the_state_by_name() -> None:
    robot, task = open_robot("ur5e:standin:push")
    tracker = _UserTracker()
    assert isinstance(tracker, SignalSource)
    arm = robot.arm
    config = dataclasses.replace(arm.config, state_names=("block_y", "pusher_x", "block_x"))
    with_tracker = type(arm)(config, sdk=arm.sdk, sources=[tracker])
    try:
        with_tracker.connect()
        assert tracker.connected
        state = with_tracker.get_observation()[STATE]
        np.testing.assert_allclose(state, [-0.05, task.scene.pusher_xy[0], 0.1], atol=1e-6)
        with_tracker.disconnect()
        assert not tracker.connected
    finally:
        _close(robot)


def test_state_layout_orders_by_name_and_follows_aliases() -> None:
    layout = StateLayout.resolve(
        ("pusher_y", "block_x", "eef_z"),
        {"arm": ("eef_x", "eef_y", "eef_z"), "tracker": ("block_x", "eef_z")},
        {"pusher_y": "eef_y"},
    )
    assert layout.providers == ("arm", "tracker", "arm") and layout.needed == ("arm", "tracker")
    state = layout.assemble({"arm": {"eef_x": 1.0, "eef_y": 2.0, "eef_z": 3.0}, "tracker": {"block_x": 4.0}})
    np.testing.assert_array_equal(state, np.array([2.0, 4.0, 3.0], dtype=np.float32))
    with pytest.raises(ValueError, match="appear more than once"):
        StateLayout.resolve(("eef_x", "eef_x"), {"arm": ("eef_x",)})


def test_xarm_commands_are_in_millimetres_and_degrees() -> None:
    robot, task = open_robot("xarm:standin:push")
    sdk, config = robot.arm.sdk, robot.arm.config
    try:
        with robot:
            robot.reset(3)
            assert sdk.sent_angles[-1] == pytest.approx([math.degrees(q) for q in config.home_joints])
            robot.send_action(np.array([0.02, -0.01], dtype=np.float32))
            pusher = task.scene.pusher_xy
            x, y, z, roll, pitch, yaw = sdk.sent_poses[-1]
            mount = np.asarray(config.task_origin)
            reached = (np.array([x, y]) / 1000.0) - mount[:2]
            assert np.linalg.norm(reached - pusher) < 0.01  # the servo target it was given, in mm, is where it went
            assert abs(abs(roll) - 180.0) < 1e-6 and abs(pitch) < 1e-6 and abs(yaw) < 1e-6  # tool down, degrees
            assert z == pytest.approx((0.02 + mount[2]) * 1000.0)
            code, position = sdk.XArmAPI("standin").get_position(is_radian=False)
            np.testing.assert_allclose(np.array(position[:2]) / 1000.0 - mount[:2], pusher, atol=1e-9)
            np.testing.assert_allclose(robot.arm_state().ee_position[:2], pusher, atol=1e-9)
    finally:
        _close(robot)


def test_ur_servol_gets_metres_and_a_rotation_vector() -> None:
    robot, task = open_robot("ur5e:standin:push")
    try:
        with robot:
            robot.reset(1)
            pose = robot.arm.sdk.RTDEReceiveInterface("standin").getActualTCPPose()
            mount = np.asarray(robot.arm.config.task_origin)
            np.testing.assert_allclose(np.array(pose[:2]) - mount[:2], task.scene.pusher_xy, atol=1e-12)
            assert np.linalg.norm(pose[3:]) == pytest.approx(math.pi)  # tool down as a rotation vector
    finally:
        _close(robot)


def test_scene_cameras_reach_the_observation() -> None:
    robot, _ = open_robot("xarm:standin:push", cameras=("top",), image_size=32)
    try:
        with robot:
            obs = robot.reset(0)
            image = obs[image_key("top")]
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and image.std() > 0
            assert set(robot.arm.frame_times) == {"top"}
    finally:
        _close(robot)


@pytest.mark.parametrize(
    "kind, module, extra, package",
    [("ur5e", "rtde_control", "ur", "ur-rtde"), ("franka", "franky", "franka", "franky-control"),
     ("xarm", "xarm", "xarm", "xarm-python-sdk")],
)  # fmt: skip
def test_a_real_arm_spec_needs_its_sdk_or_names_the_unreachable_host(kind, module, extra, package) -> None:
    """Without the SDK: an error naming the extra. With it: the real SDK is driven against loopback,
    where nothing listens, and the driver names the host and the fix."""
    if importlib.util.find_spec(module) is None:
        needs_extra = rf"robot-workflow-kit\[{extra}\].*{package}.*{kind}:standin:push"
        with pytest.raises(ModuleNotFoundError, match=needs_extra):
            open_robot(f"{kind}:127.0.0.1")
    else:
        robot, task = open_robot(f"{kind}:127.0.0.1")
        assert task is None
        with pytest.raises(ArmUnreachableError, match=r"127\.0\.0\.1"):
            robot.connect()


def test_import_sdk_names_the_extra() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"robot-workflow-kit\[ur\].*pip install ur-rtde"):
        import_sdk("ur5e", ("no_such_vendor_module_here",), "ur", "ur-rtde")


# ---- the stand-ins against the real SDKs' API surface (runs where the SDKs are installed) ----------


def _skip_without(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (its extra is optional); the stand-in cannot be compared")


def test_the_ur_standin_matches_ur_rtde() -> None:
    _skip_without("rtde_control")
    import dashboard_client
    import rtde_control
    import rtde_receive

    used = {
        rtde_control.RTDEControlInterface: ("servoL", "servoStop", "moveJ", "reuploadScript", "stopScript",
                                            "disconnect", "triggerProtectiveStop"),
        rtde_receive.RTDEReceiveInterface: ("getActualTCPPose", "getActualQ", "getActualQd", "getSafetyMode",
                                            "isProtectiveStopped", "isEmergencyStopped", "disconnect"),
        dashboard_client.DashboardClient: ("connect", "disconnect", "unlockProtectiveStop", "closeSafetyPopup"),
    }  # fmt: skip
    for cls, names in used.items():
        assert not [n for n in names if not hasattr(cls, n)], cls
    doc = rtde_control.RTDEControlInterface.servoL.__doc__.splitlines()[0]
    assert "arg0: list[float]" in doc and "arg5: float" in doc and "arg6" not in doc  # 6 positional arguments
    assert "hostname: str" in rtde_receive.RTDEReceiveInterface.__init__.__doc__


def test_the_franky_standin_matches_franky() -> None:
    _skip_without("franky")
    import franky

    from hardware.standins.franka import ERROR_NAMES

    for name in ("Robot", "Gripper", "Affine", "CartesianMotion", "JointMotion", "ReferenceType",
                 "NetworkException", "ControlException", "Errors"):  # fmt: skip
        assert hasattr(franky, name), name
    for name in ("move", "join_motion", "recover_from_errors", "has_errors", "state", "stop",
                 "current_cartesian_state", "current_joint_state"):  # fmt: skip
        assert hasattr(franky.Robot, name), name
    for name in ("grasp_async", "move_async", "width", "max_width"):
        assert hasattr(franky.Gripper, name), name
    assert not [n for n in ERROR_NAMES if not hasattr(franky.Errors, n)]
    affine = franky.Affine([0.1, 0.2, 0.3], [0.0, 0.0, 0.0, 1.0])  # translation, quaternion (x, y, z, w)
    np.testing.assert_allclose(affine.translation.reshape(3), [0.1, 0.2, 0.3])


def test_the_xarm_standin_matches_xarm_python_sdk() -> None:
    _skip_without("xarm")
    from xarm.wrapper import XArmAPI as RealXArmAPI

    from hardware.standins.xarm import XArmAPI, XArmStandIn

    for name in ("get_position", "get_joint_states", "set_servo_cartesian", "set_servo_angle", "motion_enable",
                 "set_mode", "set_state", "clean_error", "clean_warn", "set_gripper_enable", "set_gripper_mode",
                 "set_gripper_position", "get_gripper_position", "disconnect"):  # fmt: skip
        real = list(inspect.signature(getattr(RealXArmAPI, name)).parameters)
        ours = list(inspect.signature(getattr(XArmAPI, name)).parameters)
        assert ours == real, f"{name}: stand-in {ours} != SDK {real}"
    for name in ("error_code", "warn_code"):
        assert isinstance(getattr(RealXArmAPI, name), property)
    real = list(inspect.signature(RealXArmAPI.__init__).parameters)
    assert list(inspect.signature(XArmStandIn.XArmAPI).parameters) == real  # (self, port, is_radian, ...)


# ---- the Robotiq URCap socket client, against a loopback server speaking the protocol -------------


class _URCapServer(threading.Thread):
    """Answers the Robotiq URCap's ASCII protocol for one client; positions jump to the request."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.values = {"ACT": 0, "STA": 0, "GTO": 0, "POS": 0, "SPE": 0, "FOR": 0, "FLT": 0}
        self.lines: list[str] = []

    def run(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            for raw in connection.makefile("r"):
                line = raw.strip()
                self.lines.append(line)
                words = line.split()
                if words[:1] == ["GET"] and len(words) == 2 and words[1] in self.values:
                    answer = f"{words[1]} {self.values[words[1]]}"
                elif words[:1] == ["SET"] and len(words) % 2 == 1 and all(w in self.values for w in words[1::2]):
                    self.values.update({k: int(v) for k, v in zip(words[1::2], words[2::2])})
                    self.values["STA"] = 3 if self.values["ACT"] == 1 else 0
                    answer = "ack"
                else:
                    answer = "?"
                connection.sendall(answer.encode() + b"\n")


def test_the_robotiq_client_speaks_the_urcap_protocol() -> None:
    from hardware.drivers.robotiq import RobotiqGripper

    server = _URCapServer()
    server.start()
    gripper = RobotiqGripper("127.0.0.1", server.port)
    try:
        gripper.activate()
        assert server.values["STA"] == 3 and "SET ACT 1" in server.lines
        gripper.move(300, speed=128, force=-5)  # clipped into 0..255
        assert server.lines[-1] == "SET POS 255 SPE 128 FOR 0 GTO 1"
        assert gripper.position() == 255 and gripper.fault() == 0
        with pytest.raises(RuntimeError, match=r"refused SET \{'XYZ': 1\}"):
            gripper.set(XYZ=1)
    finally:
        gripper.disconnect()
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(ConnectionError, match=rf"127\.0\.0\.1:{port}.*URCap"):
        RobotiqGripper("127.0.0.1", port)
