"""The sensors of a simulated cell: an object tracker and cameras that read the stand-in's scene.

On a real cell an object tracker (motion capture, fiducials, a pose estimator)
publishes the object state a policy needs; :class:`SceneTracker` is that tracker
for a stand-in: it publishes chosen entries of the scene's own state (the block,
the cube, the target), never the arm's, which the driver must measure through
the vendor API. :class:`SceneCamera` publishes one of the scene's rendered
cameras as a :class:`hardware.cameras.Camera`.
"""

from __future__ import annotations

import time

import numpy as np

from hardware.cameras import Frame
from hardware.standins.servo import SceneServo
from robot.types import STATE, Feature, image_key


class SceneTracker:
    """A :class:`hardware.drivers.signals.SignalSource` reading ``names`` from the scene's state."""

    def __init__(self, servo: SceneServo, names: tuple[str, ...], name: str = "scene-tracker"):
        unknown = sorted(set(names) - set(servo.state_names))
        if unknown:
            raise ValueError(
                f"scene {servo.scene.name} has no state entries {unknown}; it has {list(servo.state_names)}"
            )
        self.name = name
        self._servo = servo
        self._names = tuple(names)
        self._index = [servo.state_names.index(n) for n in names]

    @property
    def signal_names(self) -> tuple[str, ...]:
        return self._names

    def connect(self) -> None:
        pass  # the scene is always there

    def disconnect(self) -> None:
        pass

    def read(self) -> dict[str, float]:
        state = self._servo.observation()[STATE]
        return {n: float(state[i]) for n, i in zip(self._names, self._index)}


class SceneCamera:
    """A :class:`hardware.cameras.Camera` showing one of the scene's rendered cameras."""

    def __init__(self, servo: SceneServo, camera: str):
        key = image_key(camera)
        feature = servo.scene.observation_features.get(key)
        if feature is None:
            rendered = [k for k in servo.scene.observation_features if k.startswith("observation.images.")]
            raise ValueError(
                f"scene {servo.scene.name} renders no camera {camera!r} (it renders {rendered}); "
                "build the scene with that camera"
            )
        self.name = camera
        self._servo, self._key, self._feature = servo, key, feature
        self._connected = False
        self._count = 0

    @property
    def feature(self) -> Feature:
        return self._feature

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    def read(self) -> Frame:
        if not self._connected:
            raise RuntimeError(f"camera {self.name!r} is not connected; call connect() first")
        image = np.asarray(self._servo.observation()[self._key])
        frame = Frame(image, time.monotonic(), self._count)
        self._count += 1
        return frame
