"""The simulated tasks by name: built-in ones, the user's, installed packages', and module paths.

Every task is a factory of the same shape, ``factory(camera: CameraConfig | None = None,
**task_specific) -> SimScene``, that imports its scene module only when called, so listing
tasks never imports robosuite or creates a GL context. A name resolves, first match wins, to:

1. a task registered in this process with :func:`register_task` (it may replace a built-in one);
2. a built-in task, the explicit dict :data:`TASKS`;
3. a task an installed package declares in the ``robot.tasks`` entry-point group
   (``my-push = mypkg.tasks:make_task`` under ``[project.entry-points."robot.tasks"]``), found with
   ``importlib.metadata`` on the first lookup that misses 1 and 2, or the first listing; one that
   does not load is skipped with one warning line naming its package;
4. a name with a colon: a family ``prefix:rest`` when :data:`FAMILIES` holds ``prefix`` (``gym:<env-id>``, any
   gymnasium env; ``metaworld:<task>``, each Meta-World task; ``robosuite:<Env>:<Robot>``, a single-arm robosuite
   environment on one of its arms), else a module path ``pkg.module:factory``,
   imported and used as it is (nothing is registered).

:func:`make_scene` builds the scene and adds the convenience options every command line offers
(``cameras``, ``image_size``, ``pointcloud``), turned into a :class:`~sim.cameras.CameraConfig`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import re
import sys
from dataclasses import dataclass
from typing import Any, Callable

from sim.cameras import CameraConfig, PointCloudConfig
from sim.scene import SimScene

TaskFactory = Callable[..., SimScene]
"""``factory(camera: CameraConfig | None = None, **task_specific) -> SimScene``."""
ENTRY_POINT_GROUP = "robot.tasks"
"""The entry-point group through which an installed package declares its tasks."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""What a registered or entry-point task name may be: no colon (module paths and families use it), no comma, no space."""
MODULE_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _push(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.push import make_push

    return make_push(camera=camera, **options)


def _push_rim(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.push import make_push

    return make_push(camera=camera, **{"rim": True, **options})


def _lift(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_lift

    return make_lift(camera=camera, **options)


def _lift_ur5e(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_lift_ur5e

    return make_lift_ur5e(camera=camera, **options)


def _can(camera: CameraConfig | None = None, **options: Any) -> SimScene:
    from sim.robosuite_scenes import make_can

    return make_can(camera=camera, **options)


TASKS: dict[str, TaskFactory] = {
    "push": _push,  # planar pusher and block, own MJCF; the fast task for tests
    "push-rim": _push_rim,  # the same with a rim that keeps the block within the pusher's reach
    "lift": _lift,  # robosuite Lift, Panda
    "lift-ur5e": _lift_ur5e,  # robosuite Lift, UR5e
    "can": _can,  # robosuite PickPlaceCan, Panda
}
"""The built-in tasks."""

def _gym(env_id: str) -> TaskFactory:
    from sim.gym_task import gym_family

    return gym_family(env_id)


def _metaworld(task: str) -> TaskFactory:
    from sim.metaworld_scene import metaworld_family

    return metaworld_family(task)


def _robosuite(rest: str) -> TaskFactory:
    from sim.robosuite_family import robosuite_family

    return robosuite_family(rest)


FAMILIES: dict[str, Callable[[str], TaskFactory]] = {
    "gym": _gym,  # gym:<env-id>, any id gymnasium.make knows (sim/gym_task.py)
    "metaworld": _metaworld,  # metaworld:<task>, every Meta-World MT1 task with its expert; pip install -e ".[metaworld]"
    "robosuite": _robosuite,  # robosuite:<Env>:<Robot>, single-arm robosuite environments on their arms (sim/robosuite_family.py)
}
"""Task families by prefix: ``FAMILIES[prefix](rest)`` is the factory of ``prefix:rest`` (a ValueError naming the
family's tasks when ``rest`` is none of them). A family prefix takes precedence over a module of the same name."""

FAMILY_USAGE: dict[str, str] = {
    "gym": "gym:<env-id> (any gymnasium id, e.g. gym:Pendulum-v1)",
    "metaworld": 'metaworld:<task> (e.g. metaworld:button-press-v3; pip install -e ".[metaworld]")',
    "robosuite": "robosuite:<Env>:<Robot> (e.g. robosuite:Stack:IIWA; experts for Lift, Stack, PickPlaceCan, Door)",
}
"""How to write a task of each built-in family (``robot tasks`` shows it)."""

_registered: dict[str, TaskFactory] = {}
_entry_points: dict[str, importlib.metadata.EntryPoint] | None = None  # name -> entry point; None until first needed
_loaded: dict[str, TaskFactory | str] = {}  # entry-point name -> its factory, or why it does not load
_warned: set[str] = set()


@dataclass(frozen=True)
class TaskEntry:
    """A task name resolved: its factory and where it came from."""

    name: str
    factory: TaskFactory
    source: str
    """``built-in``, ``registered``, ``entry point <package>``, ``module path`` or ``family <prefix>``."""


def register_task(name: str, factory: TaskFactory, *, replace: bool = False) -> None:
    """Make ``factory`` the task ``name`` for every lookup in this process (``robot tasks``, ``make_scene``, the stages).

    A name already taken (built-in, registered or an installed package's) is refused unless ``replace``. For the
    command line or worker processes, which do not run your code, declare an entry point or use ``--task
    pkg.module:factory`` instead.
    """
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"task name {name!r} is not a plain name: use letters, digits, '.', '_' and '-' (a colon marks "
                         "a module path or a family, e.g. --task pkg.module:factory)")  # fmt: skip
    if not callable(factory):
        raise TypeError(f"task {name!r}: factory must be callable as factory(camera=None, **options) -> SimScene, got {type(factory).__name__}")
    if not replace:
        taken = _source_of(name)
        if taken is not None:
            raise ValueError(f"task {name!r} is already taken ({taken}); pick another name or pass replace=True")
    _registered[name] = factory


def task_names() -> tuple[str, ...]:
    """Every task that can be listed: built-in, registered, and installed packages' that load (module paths and
    families are not listed)."""
    names = dict.fromkeys([*TASKS, *_registered])
    for name in _discover():
        if name not in names and not isinstance(_load(name), str):
            names[name] = None
    return tuple(names)


def resolve_task(name: str) -> TaskEntry:
    """The factory and source of task ``name``; a ValueError that lists the known tasks and how to add one otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"task {name!r} is not a task name; {_how_to_add()}")
    if name in _registered:
        return TaskEntry(name, _registered[name], "registered")
    if name in TASKS:
        return TaskEntry(name, TASKS[name], "built-in")
    if name in _discover():
        factory = _load(name)
        if isinstance(factory, str):
            raise ValueError(factory)
        return TaskEntry(name, factory, f"entry point {_package(_discover()[name])}")
    prefix, colon, rest = name.partition(":")
    if colon and prefix in FAMILIES:
        return TaskEntry(name, FAMILIES[prefix](rest), f"family {prefix}")
    hint = ""
    if colon:
        factory = _module_factory(name)
        if factory is not None:
            return TaskEntry(name, factory, "module path")
        families = f" (families: {', '.join(FAMILIES)})" if FAMILIES else ""
        hint = f"{prefix!r} is neither an importable module nor a task family{families}; "
    close = difflib.get_close_matches(name, task_names(), n=1)
    hint += f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown task {name!r}; {hint}known tasks: {', '.join(task_names())}; {_how_to_add()}")


def check_task(name: str) -> str:
    """``name`` when it names a task (resolving it imports a module path's module), else :func:`resolve_task`'s error."""
    resolve_task(name)
    return name


def make_scene(
    name: str,
    *,
    camera: CameraConfig | None = None,
    cameras: tuple[str, ...] | None = None,
    image_size: int = 84,
    pointcloud: bool | PointCloudConfig = False,
    **task_specific: Any,
) -> SimScene:
    """Build the scene of task ``name`` (:func:`resolve_task`), named ``name`` whatever its factory called it, so
    episodes and checkpoints record the name that builds it again.

    Either pass a full ``camera`` config, or the shortcuts: ``cameras`` (names),
    square ``image_size``, and ``pointcloud`` (``True`` = the scene's default
    camera and crop box, or a :class:`PointCloudConfig`). ``task_specific``
    options go to the scene's own config (e.g. ``max_steps`` for push).
    """
    factory = resolve_task(name).factory
    if camera is not None and (cameras or pointcloud):
        raise ValueError("pass either camera=CameraConfig(...) or the cameras/pointcloud shortcuts, not both")
    if camera is None and (cameras or pointcloud):
        cloud = PointCloudConfig() if pointcloud is True else (pointcloud or None)
        camera = CameraConfig(tuple(cameras or ()), image_size, image_size, cloud)
    scene = factory(camera=camera, **task_specific)
    if getattr(scene, "name", None) != name:
        try:
            scene.name = name
        except AttributeError:
            scene.close()
            raise TypeError(f"task {name!r}: its scene's name is read-only; make SimScene.name a plain attribute") from None
    return scene


# ------------------------------------------------------------------------------ internals


def _how_to_add() -> str:
    return (f"add one with sim.registry.register_task(name, factory), an entry point in the {ENTRY_POINT_GROUP!r} group of an "
            "installed package, or --task pkg.module:factory (see `robot tasks`)")  # fmt: skip


def _source_of(name: str) -> str | None:
    """Where a listed name comes from, or None when no built-in, registered or entry-point task has it."""
    if name in _registered:
        return "registered"
    if name in TASKS:
        return "built-in"
    return f"entry point {_package(_discover()[name])}" if name in _discover() else None


def _warn(key: str, message: str) -> None:
    """One warning line on stderr, once per process."""
    if key not in _warned:
        _warned.add(key)
        print(f"warning: {message}", file=sys.stderr)


def _package(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.name if dist is not None else ep.value.partition(":")[0]


def _discover() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' task entry points by name, read once (their modules are imported only by :func:`_load`)."""
    global _entry_points
    if _entry_points is None:
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            package = _package(ep)
            if not NAME.fullmatch(ep.name):
                _warn(f"ep:{package}:{ep.name}", f"package {package} declares task {ep.name!r} in {ENTRY_POINT_GROUP}, which is not a plain name "
                      "(letters, digits, '.', '_', '-'); skipped it: rename the entry point")  # fmt: skip
            elif ep.name in TASKS or ep.name in found:
                other = "a built-in task" if ep.name in TASKS else f"package {_package(found[ep.name])}"
                if ep.name in found and found[ep.name].value == ep.value:  # the same package seen twice on sys.path
                    continue
                _warn(f"ep:{package}:{ep.name}", f"package {package} declares task {ep.name!r}, a name {other} already has; skipped it: rename the entry point")
            else:
                found[ep.name] = ep
        _entry_points = found
    return _entry_points


def _load(name: str) -> TaskFactory | str:
    """The factory of entry point ``name``, or the one line saying why it does not load (warned once, then skipped)."""
    if name not in _loaded:
        ep = _discover()[name]
        package = _package(ep)
        try:
            factory = ep.load()
            problem = None if callable(factory) else f"{ep.value} is not callable ({type(factory).__name__})"
        except Exception as e:  # a broken plugin must not take the kit down with a traceback
            factory, problem = None, f"{ep.value} does not load ({type(e).__name__}: {e})"
        if problem is None:
            _loaded[name] = factory
        else:
            _loaded[name] = f"task {name!r} of package {package}: {problem}; fix or uninstall {package}"
            _warn(f"load:{name}", f"skipped {_loaded[name]}")
    return _loaded[name]


def _module_factory(name: str) -> TaskFactory | None:
    """The factory ``pkg.module:attr`` names, None when ``pkg.module`` is no importable module; a ValueError naming
    what is wrong when the module imports but the factory is not there or not callable."""
    module_name, _, attr = name.partition(":")
    if not MODULE_PATH.fullmatch(module_name) or not attr:
        return None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is not None and (module_name == e.name or module_name.startswith(e.name + ".")):
            return None  # the path itself is not there: an unknown task
        raise ValueError(f"task {name!r}: importing {module_name} failed ({type(e).__name__}: {e})") from None
    except Exception as e:
        raise ValueError(f"task {name!r}: importing {module_name} failed ({type(e).__name__}: {e})") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"task {name!r}: module {module_name} has no {attr!r}; name a factory(camera=None, **options) -> SimScene defined there")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"task {name!r}: {module_name}.{attr} is not callable ({type(obj).__name__}); name a factory(camera=None, **options) -> SimScene")
    return obj
