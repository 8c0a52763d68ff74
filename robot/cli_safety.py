"""The ``--safety-*`` options: command-line overrides of a task's safety config.

Every command that takes ``--task`` or ``--robot`` (record, eval, deploy, pipeline, critic-ranking, train offline and
online) gets one flag per :class:`robot.types.SafetyConfig` field (``--safety-joint-margin``, ``--safety-velocity-scale``
alias ``--safety-max-speed``, ``--safety-workspace-low/high``, ``--no-safety-guard-joint-limits``...), generated like
the commands' own (``robot.cli_config``), the field's docstring as help. A flag given replaces that field in the config
each robot the command builds would otherwise get: the task's own (Meta-World's Sawyer, a robosuite arm's), or the
default for a real arm. A flag left out keeps it.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from robot.cli_config import Flag, config_flags, parameters, parse

PANEL = "Safety (replaces fields of the task's own safety config)"
ALIASES = {"safety.velocity_scale": ("--safety-max-speed",)}


def safety_flags() -> list[Flag]:
    """One flag per SafetyConfig field, ``--safety-<field>``."""
    from robot.types import SafetyConfig

    return config_flags(SafetyConfig, prefix=("safety",), aliases=ALIASES, panel=PANEL)


def safety_parameters() -> list[inspect.Parameter]:
    """The flags as typer parameters (None: not given), for ``generated_command(extra=...)``."""
    return parameters(safety_flags())


def given_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The SafetyConfig fields the user set, parsed (a ValueError naming the flag when one does not parse); the safety
    values are removed from ``values``."""
    given = {}
    for flag in safety_flags():
        raw = values.pop(flag.param, None)
        if raw is not None:
            given[flag.path[-1]] = parse(flag, raw)
    return given


def with_safety(run: Callable[[dict[str, Any]], None], fail: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    """``run`` with the ``--safety-*`` values in force (``hardware.registry.safety_overrides``) around it; a value that
    does not parse or that SafetyConfig refuses is one line through ``fail``."""

    def wrapped(values: dict[str, Any]) -> None:
        from hardware.registry import safety_overrides
        from robot.types import SafetyConfig

        try:
            given = given_overrides(values)
            if given:  # check the values alone now, not at the first robot: a corner pair may need the task's other corner
                SafetyConfig(**{k: v for k, v in given.items() if not k.startswith("workspace_") or k == "workspace_approach"})
        except ValueError as e:
            fail(str(e))
            return
        with safety_overrides(**given):
            run(values)

    return wrapped
