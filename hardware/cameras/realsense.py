"""Intel RealSense colour streams through ``pyrealsense2`` (the ``realsense`` extra), imported on connect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hardware.cameras.frames import LatestFrameReader, ReaderCamera, check_camera_config


@dataclass(frozen=True)
class RealSenseCameraConfig:
    """The colour stream of an Intel RealSense camera (needs ``pyrealsense2``: the ``realsense`` extra)."""

    name: str
    """Camera name: the driver publishes ``observation.images.<name>``."""
    serial: str | None = None
    """Serial number of the camera to open; ``None`` = the only one connected."""
    height: int = 84
    """Height of the published image, pixels (frames are resized to it)."""
    width: int = 84
    """Width of the published image, pixels."""
    capture_size: tuple[int, int] = (480, 640)
    """(height, width) of the colour stream the camera is asked for."""
    capture_fps: int = 30
    """Frame rate of the colour stream."""
    timeout_s: float = 2.0
    """Longest wait for a frame before ``read`` fails."""

    def __post_init__(self) -> None:
        check_camera_config(self)
        if min(self.capture_size) <= 0 or self.capture_fps <= 0:
            raise ValueError(f"RealSenseCameraConfig capture_size and capture_fps must be positive, got {self.capture_size}, {self.capture_fps}")


class RealSenseCamera(ReaderCamera):
    """The colour stream of a RealSense, read by a background thread; ``pyrealsense2`` is imported on connect."""

    def __init__(self, config: RealSenseCameraConfig):
        super().__init__(config)
        self._pipeline: Any = None

    def connect(self) -> None:
        if self._reader is not None:
            return
        try:
            import pyrealsense2 as rs
        except ImportError as exc:
            raise ModuleNotFoundError(
                f"camera {self.name!r} needs pyrealsense2: pip install 'robot-workflow-kit[realsense]'"
            ) from exc
        context = rs.context()
        serials = [d.get_info(rs.camera_info.serial_number) for d in context.query_devices()]
        wanted = self.config.serial
        if not serials or (wanted is not None and wanted not in serials):
            raise RuntimeError(
                f"camera {self.name!r}: RealSense {wanted or '(any)'} is not connected "
                f"(connected: {', '.join(serials) or 'none'}); plug it into a USB 3 port "
                "(`rs-enumerate-devices` lists cameras)"
            )
        config = rs.config()
        config.enable_device(wanted or serials[0])
        height, width = self.config.capture_size
        config.enable_stream(rs.stream.color, width, height, rs.format.rgb8, self.config.capture_fps)
        pipeline = rs.pipeline(context)
        try:
            pipeline.start(config)
        except RuntimeError as exc:
            raise RuntimeError(
                f"camera {self.name!r}: RealSense {wanted or serials[0]} refused the colour stream "
                f"{width}x{height} @ {self.config.capture_fps} Hz ({exc}); pick a mode it lists"
            ) from exc
        self._pipeline = pipeline
        timeout_ms = int(self.config.timeout_s * 1000)

        def grab() -> np.ndarray:
            color = pipeline.wait_for_frames(timeout_ms).get_color_frame()
            return np.asanyarray(color.get_data()).copy()  # (h, w, 3) RGB; the SDK reuses its buffer

        self._reader = LatestFrameReader(self.name, grab, (self.config.height, self.config.width), 0.0)

    def _release(self) -> None:
        if self._pipeline is not None:
            self._pipeline.stop()
            self._pipeline = None
