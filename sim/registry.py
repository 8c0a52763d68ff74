"""The simulated tasks by name: an explicit dict of lazy factories.

Every factory has the same shape, ``factory(camera: CameraConfig | None = None,
**task_specific) -> SimScene``, and imports its scene module only when called,
so listing tasks never imports robosuite or creates a GL context.
:func:`make_scene` adds the convenience options every command line offers
(``cameras``, ``image_size``, ``pointcloud``) and turns them into a
:class:`~sim.cameras.CameraConfig`.
"""

from __future__ import annotations

from typing import Any, Callable

from sim.cameras import CameraConfig, PointCloudConfig
from sim.scene import SimScene


def _push(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.push import make_push

    return make_push(camera=camera, **options)


def _lift(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_lift

    return make_lift(camera=camera, **options)


def _lift_ur5e(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_lift_ur5e

    return make_lift_ur5e(camera=camera, **options)


def _can(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_can

    return make_can(camera=camera, **options)


TASKS: dict[str, Callable[..., SimScene]] = {
    "push": _push,  # planar pusher and block, own MJCF; the fast task for tests
    "lift": _lift,  # robosuite Lift, Panda
    "lift-ur5e": _lift_ur5e,  # robosuite Lift, UR5e
    "can": _can,  # robosuite PickPlaceCan, Panda
}


def task_names() -> tuple[str, ...]:
    return tuple(TASKS)


def make_scene(
    name: str,
    *,
    camera: CameraConfig | None = None,
    cameras: tuple[str, ...] | None = None,
    image_size: int = 84,
    pointcloud: bool | PointCloudConfig = False,
    **task_specific: Any,
) -> SimScene:
    """Build the scene registered as ``name``.

    Either pass a full ``camera`` config, or the shortcuts: ``cameras`` (names),
    square ``image_size``, and ``pointcloud`` (``True`` = the scene's default
    camera and crop box, or a :class:`PointCloudConfig`). ``task_specific``
    options go to the scene's own config (e.g. ``max_steps`` for push).
    """
    factory = TASKS.get(name)
    if factory is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    if camera is not None and (cameras or pointcloud):
        raise ValueError("pass either camera=CameraConfig(...) or the cameras/pointcloud shortcuts, not both")
    if camera is None and (cameras or pointcloud):
        cloud = PointCloudConfig() if pointcloud is True else (pointcloud or None)
        camera = CameraConfig(tuple(cameras or ()), image_size, image_size, cloud)
    return factory(camera=camera, **task_specific)
