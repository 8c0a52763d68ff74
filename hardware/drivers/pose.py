"""Pose arithmetic shared by the Cartesian drivers and their stand-ins.

A pose is a position ``(3,)`` in metres and a ``scipy.spatial.transform.Rotation``,
both in the robot base frame. Rotation deltas are axis-angle vectors (radians)
applied in the base frame (left-multiplied), the convention of the kit's scenes
(robosuite's OSC_POSE delta input). The vendors spell orientation differently:
UR uses rotation vectors, franky quaternions ``(x, y, z, w)``, and xArm roll,
pitch, yaw about the fixed x, y, z axes (``R = Rz(yaw) Ry(pitch) Rx(roll)``),
in degrees unless told otherwise.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

TOOL_DOWN = Rotation.from_rotvec([np.pi, 0.0, 0.0])  # tool z axis pointing at the table


def rotated(delta_rotvec: np.ndarray, rotation: Rotation) -> Rotation:
    """``rotation`` turned by the axis-angle ``delta_rotvec`` (3,) about the base frame's axes."""
    return Rotation.from_rotvec(np.asarray(delta_rotvec, dtype=np.float64)) * rotation


def rotation_delta(target: Rotation, current: Rotation) -> np.ndarray:
    """The base-frame axis-angle (3,) that turns ``current`` into ``target`` (inverse of :func:`rotated`)."""
    return (target * current.inv()).as_rotvec()


def angle_between(a: Rotation, b: Rotation) -> float:
    """Smallest rotation angle (rad) between two orientations."""
    return float(np.linalg.norm(rotation_delta(a, b)))


def quaternion_wxyz(rotation: Rotation, reference: np.ndarray | None = None) -> np.ndarray:
    """Quaternion ``(w, x, y, z)`` (4,) with the sign closest to ``reference`` (or ``w >= 0`` without one).

    ``q`` and ``-q`` are the same orientation; keeping one sign stops observations
    from flipping between neighbouring steps (the scenes do the same).
    """
    x, y, z, w = rotation.as_quat()
    q = np.array([w, x, y, z])
    sign = q @ reference if reference is not None else q[0]
    return q if sign >= 0 else -q


def rpy_degrees(rotation: Rotation) -> np.ndarray:
    """xArm roll, pitch, yaw (3,) in degrees."""
    return rotation.as_euler("xyz", degrees=True)


def from_rpy_degrees(rpy: np.ndarray) -> Rotation:
    """The orientation of xArm roll, pitch, yaw (3,) in degrees."""
    return Rotation.from_euler("xyz", np.asarray(rpy, dtype=np.float64), degrees=True)
