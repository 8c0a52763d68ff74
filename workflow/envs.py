"""Build the simulated robot a policy needs: the cameras, point cloud and state its features name."""

from __future__ import annotations

from typing import Any, Mapping

from robot.types import IMAGES_PREFIX, POINTCLOUD, Feature


def sim_options_for(features: Mapping[str, Feature]) -> dict[str, Any]:
    """Scene options (``cameras``, ``image_size``, ``pointcloud``) that produce ``features``."""
    cameras = tuple(k[len(IMAGES_PREFIX):] for k in features if k.startswith(IMAGES_PREFIX))
    opts: dict[str, Any] = {}
    if cameras:
        sizes = {features[IMAGES_PREFIX + c].shape[0] for c in cameras}
        if len(sizes) != 1:
            raise ValueError(f"cameras of different sizes {sorted(sizes)} are not supported by the sim shortcut options")
        opts.update(cameras=cameras, image_size=sizes.pop())
    if POINTCLOUD in features:
        opts["pointcloud"] = True
    return opts


def sim_lanes(task: str, features: Mapping[str, Feature], count: int):
    """``count`` sims of ``task`` side by side for a policy reading ``features`` (``workflow.lanes.SimLanes``); None
    when they would render (cameras, a point cloud): a scene renders on the thread that made it."""
    from workflow.lanes import SimLanes

    return None if count <= 1 or sim_options_for(features) else SimLanes(count, lambda: make_sim_for(task, features))


def make_sim_for(task: str, features: Mapping[str, Feature], **opts: Any):
    """``(robot, task)`` in sim, rendering what ``features`` need; the robot is not yet connected."""
    from hardware.registry import make_sim

    return make_sim(task, **sim_options_for(features), **opts)
