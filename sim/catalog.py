"""What ``robot tasks`` shows of a task: its features, cameras, expert, limits and source, read off one built scene."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from robot.report import format_table
from robot.types import Feature
from sim.registry import make_scene, resolve_task


@dataclass(frozen=True)
class TaskSummary:
    """One task as its scene describes itself, built with its default options (no cameras rendered)."""

    name: str
    source: str
    """``built-in``, ``registered``, ``entry point <package>``, ``module path`` or ``family <prefix>``."""
    robot: str
    """The arm model (``pusher``, ``panda``, ``ur5e``)."""
    observation: Mapping[str, Feature]
    action: Mapping[str, Feature]
    cameras: tuple[str, ...] | None
    """What ``--cameras`` can render; None when the scene does not say."""
    expert: bool
    """Whether the task has a scripted expert (``--device scripted``)."""
    max_steps: int
    fps: float


def describe_task(name: str) -> TaskSummary:
    """Build task ``name``'s scene once, read it, close it."""
    source = resolve_task(name).source
    scene = make_scene(name)
    try:
        try:
            scene.expert(seed=0)
            expert = True
        except (NotImplementedError, AttributeError):
            expert = False
        cameras = getattr(scene, "camera_names", None)
        return TaskSummary(name, source, str(scene.robot_name), dict(scene.observation_features), dict(scene.action_features),
                           tuple(cameras) if cameras is not None else None, expert, int(scene.max_steps), float(scene.fps))  # fmt: skip
    finally:
        scene.close()


def _shapes(features: Mapping[str, Feature]) -> str:
    """``observation.state (8,), observation.images.top 84x84x3``."""
    return ", ".join(f"{key} {f.describe().partition(' ')[2]}" for key, f in features.items())


def tasks_table(summaries: list[TaskSummary], title: str | None = None) -> str:
    """One row per task: features as ``key shape``, cameras, expert, episode limit and rate, source."""
    rows = [[s.name, s.robot, _shapes(s.observation), _shapes(s.action), ",".join(s.cameras) if s.cameras is not None else None,
             "yes" if s.expert else "no", s.max_steps, f"{s.fps:g}", s.source] for s in summaries]  # fmt: skip
    return format_table(["task", "robot", "observation", "action", "cameras", "expert", "max steps", "fps", "source"], rows, title=title)


def task_details(summary: TaskSummary) -> str:
    """Every feature of one task with its dtype, shape and entry names."""
    rows = [[key, f.describe(), ", ".join(f.names) if f.names else None] for key, f in {**summary.observation, **summary.action}.items()]
    return format_table(["key", "type", "names"], rows, title=f"features of {summary.name} (images come with --cameras, "
                                                              "observation.pointcloud with --pointcloud)")  # fmt: skip
