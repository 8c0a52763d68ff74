"""OpenCV ``VideoCapture`` cameras: V4L2 devices on Linux, and video files replayed in real time."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.cameras.frames import LatestFrameReader, ReaderCamera, check_camera_config


@dataclass(frozen=True)
class OpenCVCameraConfig:
    """An OpenCV ``VideoCapture`` source: a V4L2 device on Linux, or a video file."""

    name: str
    """Camera name: the driver publishes ``observation.images.<name>``."""
    device: int | str = 0
    """Device index (``/dev/video<N>``), a device path, or a video file (replayed at its own frame rate)."""
    height: int = 84
    """Height of the published image, pixels (frames are resized to it)."""
    width: int = 84
    """Width of the published image, pixels."""
    capture_size: tuple[int, int] | None = None
    """(height, width) mode to ask the device for; ``None`` = its default."""
    capture_fps: float | None = None
    """Frame rate to ask the device for; ``None`` = its default."""
    timeout_s: float = 2.0
    """Longest wait for the first frame, and the oldest a latest frame may be before ``read`` fails."""
    loop: bool = False
    """Video files only: start over at the end instead of ending the stream."""

    def __post_init__(self) -> None:
        check_camera_config(self)
        if isinstance(self.device, int) and self.device < 0:
            raise ValueError(f"OpenCVCameraConfig.device index must be >= 0, got {self.device}")


class OpenCVCamera(ReaderCamera):
    """A V4L2 device or video file read through OpenCV; frames are converted to RGB and resized."""

    def __init__(self, config: OpenCVCameraConfig):
        super().__init__(config)
        self._capture: Any = None

    @property
    def source(self) -> str:
        """What :attr:`OpenCVCameraConfig.device` names, as a path."""
        device = self.config.device
        return f"/dev/video{device}" if isinstance(device, int) else str(device)

    def connect(self) -> None:
        if self._reader is not None:
            return
        import cv2

        path = self.source
        is_file = os.path.isfile(path)
        if not is_file and not os.path.exists(path):
            present = ", ".join(sorted(glob.glob("/dev/video*"))) or "none"
            raise FileNotFoundError(
                f"camera {self.name!r}: {path} does not exist (video devices present: {present}); "
                "plug the camera in, or fix OpenCVCameraConfig.device (`v4l2-ctl --list-devices` lists cameras)"
            )
        backend = cv2.CAP_ANY if is_file else getattr(cv2, "CAP_V4L2", cv2.CAP_ANY)
        capture = cv2.VideoCapture(self.config.device if isinstance(self.config.device, int) else path, backend)
        if not capture.isOpened():
            capture.release()
            raise RuntimeError(
                f"camera {self.name!r}: OpenCV could not open {path}; another program may hold it, "
                "or it is not a capture device (check with `v4l2-ctl -d DEVICE --all`)"
            )
        if self.config.capture_size is not None:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self.config.capture_size[0])
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, self.config.capture_size[1])
        if self.config.capture_fps is not None:
            capture.set(cv2.CAP_PROP_FPS, self.config.capture_fps)
        period = 0.0
        if is_file:  # a file decodes as fast as it can: pace it at its own rate, like a live device
            fps = capture.get(cv2.CAP_PROP_FPS)
            period = 1.0 / fps if fps and fps > 0 else 1.0 / 30.0
        self._capture = capture
        self._reader = LatestFrameReader(
            self.name, lambda: self._grab(is_file), (self.config.height, self.config.width), period
        )

    def _grab(self, is_file: bool) -> np.ndarray | None:
        import cv2

        ok, bgr = self._capture.read()
        if not ok and is_file and self.config.loop:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._capture.read()
        if not ok:
            if is_file:
                return None  # the file ended: the last frame stays readable
            raise RuntimeError(f"{self.source} returned no frame")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _release(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
