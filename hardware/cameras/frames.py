"""What every camera shares: the :class:`Frame`, the :class:`Camera` protocol and the
background reader that keeps a device's latest frame (see :mod:`hardware.cameras`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from robot.types import Feature


@dataclass(frozen=True)
class Frame:
    """One camera image and when it arrived."""

    image: np.ndarray  # (H, W, 3) uint8 RGB, upright, at the configured size
    timestamp: float  # time.monotonic() when the frame was captured
    index: int  # frames captured since connect: 0, 1, ...


@runtime_checkable
class Camera(Protocol):
    """A camera publishing ``observation.images.<name>``."""

    name: str

    @property
    def feature(self) -> Feature: ...

    @property
    def is_connected(self) -> bool: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def read(self) -> Frame:
        """The latest frame; raises when none arrived within the camera's timeout."""
        ...


def image_feature(height: int, width: int) -> Feature:
    return Feature((height, width, 3), "uint8", names=("height", "width", "channel"))


def check_camera_config(config: Any) -> None:
    """The checks every camera config shares: a dot-free name, a positive image size and timeout."""
    kind = type(config).__name__
    if not config.name or "." in config.name:
        raise ValueError(f"{kind}.name must be a non-empty name without dots, got {config.name!r}")
    if config.height <= 0 or config.width <= 0:
        raise ValueError(f"{kind} image size must be positive, got {config.height}x{config.width}")
    if config.timeout_s <= 0:
        raise ValueError(f"{kind}.timeout_s must be positive, got {config.timeout_s}")


class ReaderCamera:
    """What a camera with a :class:`LatestFrameReader` shares; a subclass opens its device in
    ``connect`` (setting ``self._reader``) and closes it in :meth:`_release`."""

    def __init__(self, config: Any):
        self.config = config
        self.name: str = config.name
        self._reader: LatestFrameReader | None = None

    @property
    def feature(self) -> Feature:
        return image_feature(self.config.height, self.config.width)

    @property
    def is_connected(self) -> bool:
        return self._reader is not None

    def read(self) -> Frame:
        if self._reader is None:
            raise RuntimeError(f"camera {self.name!r} is not connected; call connect() first")
        return self._reader.latest(self.config.timeout_s)

    def disconnect(self) -> None:
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
        self._release()

    def _release(self) -> None:
        """Close the device (after the reader thread has stopped); nothing to do when none is open."""


class LatestFrameReader:
    """Runs ``grab`` in a daemon thread and keeps the newest image, resized and stamped.

    ``grab`` returns an RGB image of any size, or ``None`` when the source has
    nothing (yet); it may raise, which ends the thread and makes :meth:`latest` fail.
    ``period`` paces a source that would otherwise run faster than real time (a file).
    """

    def __init__(self, camera: str, grab: Callable[[], np.ndarray | None], size: tuple[int, int], period: float):
        self._camera, self._grab, self._size, self._period = camera, grab, size, period
        self._frame: Frame | None = None
        self._error: BaseException | None = None
        self._ended = False
        self._arrived = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{camera}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import cv2

        height, width = self._size
        count = 0
        next_time = time.monotonic()
        while not self._stop.is_set():
            try:
                image = self._grab()
            except BaseException as exc:  # noqa: BLE001 - handed to the reader of the frames
                with self._arrived:
                    self._error = exc
                    self._arrived.notify_all()
                return
            if image is None:
                with self._arrived:
                    self._ended = True
                    self._arrived.notify_all()
                return
            stamp = time.monotonic()
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            with self._arrived:
                self._frame = Frame(np.ascontiguousarray(image, dtype=np.uint8), stamp, count)
                self._arrived.notify_all()
            count += 1
            if self._period > 0:
                next_time = max(next_time + self._period, time.monotonic() - self._period)
                self._stop.wait(max(0.0, next_time - time.monotonic()))

    def latest(self, timeout_s: float) -> Frame:
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while self._frame is None and self._error is None and not self._ended:
                if not self._arrived.wait(max(0.0, deadline - time.monotonic())):
                    raise TimeoutError(
                        f"camera {self._camera!r} delivered no frame within {timeout_s} s of connecting; "
                        "check the cable and that no other program holds the device"
                    )
            if self._error is not None:
                raise RuntimeError(
                    f"camera {self._camera!r} stopped delivering frames: {self._error}; "
                    "check the cable, then disconnect() and connect() again"
                ) from self._error
            frame = self._frame
            if frame is None:
                raise RuntimeError(f"camera {self._camera!r}: its source ended before the first frame")
            age = time.monotonic() - frame.timestamp
            if age > timeout_s and not self._ended:
                raise TimeoutError(
                    f"camera {self._camera!r}: the latest frame is {age:.2f} s old (timeout {timeout_s} s); "
                    "the device stopped streaming (unplugged, or the USB bus is saturated)"
                )
            return frame

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
