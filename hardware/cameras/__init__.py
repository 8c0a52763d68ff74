"""Cameras of a real cell: OpenCV / V4L2 devices (and video files) and Intel RealSense.

Every camera is a :class:`Camera`. Its :attr:`~Camera.feature` (uint8 ``(H, W, 3)``
RGB at the configured size) is readable before :meth:`~Camera.connect`; connect
opens the device and starts a background reader thread that keeps only the
latest :class:`Frame`, stamped with ``time.monotonic()`` (the clock of the
observations) when it arrived. :meth:`~Camera.read` returns that latest frame
without waiting for a new one, and fails clearly when the device delivers
nothing within ``timeout_s``. Nothing is opened, and no thread runs, before
``connect()``. A driver publishes each camera as ``observation.images.<name>``.
"""

from hardware.cameras.frames import Camera, Frame, image_feature
from hardware.cameras.opencv import OpenCVCamera, OpenCVCameraConfig
from hardware.cameras.realsense import RealSenseCamera, RealSenseCameraConfig

__all__ = [
    "Camera", "Frame", "OpenCVCamera", "OpenCVCameraConfig", "RealSenseCamera", "RealSenseCameraConfig",
    "image_feature",
]  # fmt: skip
