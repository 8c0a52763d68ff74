"""Robot specs for the real-arm drivers: ``ur5e:HOST``, ``franka:HOST``, ``xarm:HOST``, and
``ur5e:standin:TASK`` (the same driver over its vendor stand-in over a simulated scene,
:mod:`hardware.standins.cell`).

:func:`open_arm` is what ``hardware.registry`` calls for these kinds. A real arm
comes back with no task (the operator labels success).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hardware.cameras import Camera
from hardware.drivers.cartesian import CartesianArm
from hardware.drivers.contract import CartesianConfig
from hardware.drivers.signals import SignalSource
from hardware.safety import SafeRobot, SafetyConfig
from robot.protocols import Task

STANDIN_HOST = "standin"
PUSHER_ALIASES = {"pusher_x": "eef_x", "pusher_y": "eef_y"}  # the push scene calls its end effector the pusher


@dataclass(frozen=True)
class Vendor:
    """How one kind of real arm is built: its config and driver classes."""

    config: type[CartesianConfig]
    arm: type[CartesianArm]


def vendors() -> dict[str, Vendor]:
    """The driver kinds by spec prefix (imports the driver modules, not the vendor SDKs)."""
    from hardware.drivers.franka import FrankaArm, FrankaConfig
    from hardware.drivers.ur import URArm, URConfig
    from hardware.drivers.xarm import XArmArm, XArmConfig

    return {"ur5e": Vendor(URConfig, URArm), "franka": Vendor(FrankaConfig, FrankaArm), "xarm": Vendor(XArmConfig, XArmArm)}


def open_arm(kind: str, target: str, safety: SafetyConfig | None, opts: dict[str, Any]) -> tuple[SafeRobot, Task | None]:
    """``target`` is a host, or ``standin:<task>`` (a simulated cell, built by :mod:`hardware.standins.cell`,
    which production arms never import); see :func:`open_real` and ``open_standin`` for ``opts``. ``safety`` None:
    a stand-in's task's own config, a real arm's ``SafetyConfig()``; the command line's overrides apply to either."""
    from hardware.registry import with_overrides

    vendor = vendors()[kind]
    head, sep, task = target.partition(":")
    if head == STANDIN_HOST and sep:
        from hardware.standins.cell import open_standin

        return open_standin(kind, vendor, task, safety, **opts)
    return open_real(kind, vendor, target, with_overrides(safety or SafetyConfig()), **opts), None


def open_real(
    kind: str,
    vendor: Vendor,
    host: str,
    safety: SafetyConfig,
    *,
    config: CartesianConfig | None = None,
    sources: Sequence[SignalSource] = (),
    cameras: Sequence[Camera] = (),
    **fields: Any,
) -> SafeRobot:
    """The real arm at ``host``: ``config`` (a vendor config for that host) or its fields as keywords
    (``state_names=...``, ``fps=...``; push's ``pusher_x/y`` read the TCP unless ``state_aliases`` says
    otherwise); ``sources`` are trackers, ``cameras`` are camera objects."""
    if config is None:
        fields.setdefault("state_aliases", dict(PUSHER_ALIASES))
        config = vendor.config(host=host, **fields)
    elif fields or config.host != host:
        raise ValueError(f"give {kind}:{host} either config= (with host {host!r}) or config fields, not both")
    arm = vendor.arm(config, sources=tuple(sources), cameras=tuple(cameras))
    return SafeRobot(arm, safety, name=f"{kind}:{host}")
