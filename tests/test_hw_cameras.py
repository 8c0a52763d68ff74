"""Cameras of a real cell: OpenCV on a video file written here (a live V4L2 device where one exists),
RealSense where pyrealsense2 is installed, and a camera feeding a driver's observation."""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from hardware.cameras import Camera, OpenCVCamera, OpenCVCameraConfig, RealSenseCamera, RealSenseCameraConfig
from hardware.registry import open_robot
from robot.types import image_key

FRAMES, FPS = 12, 30.0


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 frames of 64x48 MJPG video at 30 fps: red on the left half, the frame number in the green level."""
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 48))
    assert writer.isOpened()
    for i in range(FRAMES):
        bgr = np.zeros((48, 64, 3), np.uint8)
        bgr[:, :32, 2] = 255  # red (BGR order on disk)
        bgr[:, 32:, 1] = 20 * i
        writer.write(bgr)
    writer.release()
    return path


def _camera_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("camera-")]


def test_opencv_camera_reads_timestamped_resized_rgb_frames(video: Path) -> None:
    camera = OpenCVCamera(OpenCVCameraConfig(name="clip", device=str(video), height=24, width=32, loop=True))
    assert isinstance(camera, Camera)
    assert camera.feature.shape == (24, 32, 3) and camera.feature.dtype == "uint8"
    assert not camera.is_connected and "camera-clip" not in _camera_threads()  # nothing runs before connect
    start = time.monotonic()
    camera.connect()
    try:
        first = camera.read()
        assert first.image.shape == (24, 32, 3) and first.image.dtype == np.uint8
        left, right = first.image[:, :12].reshape(-1, 3).mean(0), first.image[:, 20:].reshape(-1, 3).mean(0)
        assert left[0] > 200 and left[2] < 50  # red came back as channel 0: converted to RGB
        assert right[0] < 50
        assert start <= first.timestamp <= time.monotonic()
        time.sleep(3 * FRAMES / FPS)  # longer than the clip: it loops, paced at its own rate
        later = camera.read()
        assert later.index > FRAMES and later.timestamp > first.timestamp
        assert later.index < 4 * FRAMES  # paced near 30 fps, not decoded as fast as possible
        assert time.monotonic() - later.timestamp < 0.5
    finally:
        camera.disconnect()
    assert "camera-clip" not in _camera_threads()
    with pytest.raises(RuntimeError, match="not connected"):
        camera.read()


def test_a_file_that_ends_keeps_its_last_frame(video: Path) -> None:
    camera = OpenCVCamera(OpenCVCameraConfig(name="once", device=str(video), height=48, width=64))
    camera.connect()
    try:
        time.sleep(2 * FRAMES / FPS)
        frame = camera.read()
        assert frame.index == FRAMES - 1
        assert abs(float(frame.image[:, 40:, 1].mean()) - 20 * (FRAMES - 1)) < 8  # the last frame's green level
    finally:
        camera.disconnect()


def test_a_missing_device_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"camera 'wrist': /dev/video97 does not exist.*plug the camera in"):
        OpenCVCamera(OpenCVCameraConfig(name="wrist", device=97)).connect()
    with pytest.raises(FileNotFoundError, match="nothing.avi does not exist"):
        OpenCVCamera(OpenCVCameraConfig(name="file", device=str(tmp_path / "nothing.avi"))).connect()
    not_video = tmp_path / "notes.txt"
    not_video.write_text("not a video")
    with pytest.raises(RuntimeError, match="could not open"):
        OpenCVCamera(OpenCVCameraConfig(name="file", device=str(not_video))).connect()


def test_camera_configs_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="without dots"):
        OpenCVCameraConfig(name="front.left")
    with pytest.raises(ValueError, match="positive"):
        OpenCVCameraConfig(name="front", height=0)
    with pytest.raises(ValueError, match="timeout_s"):
        RealSenseCameraConfig(name="front", timeout_s=0)


@pytest.mark.skipif(not glob.glob("/dev/video*"), reason="no V4L2 device on this machine (and no v4l2loopback)")
def test_a_live_v4l2_device_streams() -> None:
    device = sorted(glob.glob("/dev/video*"))[0]
    camera = OpenCVCamera(OpenCVCameraConfig(name="live", device=device, timeout_s=5.0))
    camera.connect()
    try:
        first = camera.read()
        time.sleep(0.5)
        assert camera.read().index > first.index
    finally:
        camera.disconnect()


def test_realsense_needs_its_package_or_a_device() -> None:
    camera = RealSenseCamera(RealSenseCameraConfig(name="d435"))
    assert camera.feature.shape == (84, 84, 3)
    if importlib.util.find_spec("pyrealsense2") is None:
        with pytest.raises(ModuleNotFoundError, match=r"robot-workflow-kit\[realsense\]"):
            camera.connect()
        return
    import pyrealsense2 as rs

    if len(rs.context().query_devices()) > 0:
        pytest.skip("a RealSense is connected; this test checks the error without one")
    with pytest.raises(RuntimeError, match=r"RealSense \(any\) is not connected \(connected: none\)"):
        camera.connect()
    assert not camera.is_connected


def test_a_driver_publishes_an_opencv_camera(video: Path) -> None:
    """A driver takes camera objects: here the UR driver over its stand-in, with a video-file camera."""
    robot, _ = open_robot("ur5e:standin:push")
    arm = robot.arm
    camera = OpenCVCamera(OpenCVCameraConfig(name="front", device=str(video), height=24, width=32, loop=True))
    config = dataclasses.replace(arm.config, state_names=("pusher_x", "pusher_y"))
    with_camera = type(arm)(config, sdk=arm.sdk, cameras=[camera])
    assert set(with_camera.observation_features) == {"observation.state", image_key("front")}
    with_camera.connect()
    try:
        obs = with_camera.get_observation()
        assert obs[image_key("front")].shape == (24, 32, 3)
        assert abs(with_camera.frame_times["front"] - time.monotonic()) < 1.0
    finally:
        with_camera.disconnect()
        robot.close()
    assert not camera.is_connected
