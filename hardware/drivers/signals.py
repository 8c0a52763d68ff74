"""``observation.state`` assembled by name from whoever publishes each entry.

A real arm knows its own proprioception (TCP pose, joints, gripper) but not the
objects on the table. A policy trained in sim reads ``observation.state`` as a
vector of named entries (``pusher_x``, ``block_x``, ``obj_qw``...). So the state
is put together by name: the driver publishes its named proprio signals, every
:class:`SignalSource` (an object tracker on a real cell, the simulated scene on a
stand-in) publishes its own, and :class:`StateLayout` picks each wanted entry
from the first provider that publishes it. An alias lets a wanted name read a
published one under another name (the push task calls the end effector
``pusher_x``; a driver publishes ``eef_x``). A name nobody publishes is an error
that names it and lists who publishes what.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class SignalSource(Protocol):
    """A sensor that publishes named scalar signals for ``observation.state`` (e.g. an object tracker).

    ``signal_names`` is readable before :meth:`connect`; :meth:`read` returns a
    value for every one of them: positions in the task frame (see
    ``hardware.drivers.cartesian.CartesianConfig``), metres and radians.
    """

    name: str

    @property
    def signal_names(self) -> tuple[str, ...]: ...

    def connect(self) -> None: ...

    def disconnect(self) -> None: ...

    def read(self) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class StateLayout:
    """Which provider each entry of ``observation.state`` comes from, and under which published name."""

    names: tuple[str, ...]  # the state entries, in order
    providers: tuple[str, ...]  # per entry: the provider that publishes it
    published: tuple[str, ...]  # per entry: the name it is published under (differs when aliased)

    @staticmethod
    def resolve(
        names: tuple[str, ...],
        offered: Mapping[str, tuple[str, ...]],
        aliases: Mapping[str, str] | None = None,
    ) -> "StateLayout":
        """Match every wanted name to the first provider in ``offered`` (provider -> its names) that has it.

        ``aliases`` maps a wanted name to the published name it reads.
        """
        if len(set(names)) != len(names):
            twice = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"observation.state names {twice} appear more than once; each entry needs one name")
        aliases = dict(aliases or {})
        providers, published, missing = [], [], []
        for name in names:
            source_name = aliases.get(name, name)
            owner = next((p for p, signals in offered.items() if source_name in signals), None)
            if owner is None:
                missing.append(name if source_name == name else f"{name} (alias of {source_name})")
                continue
            providers.append(owner)
            published.append(source_name)
        if missing:
            who = "; ".join(f"{p} publishes {', '.join(s) or 'nothing'}" for p, s in offered.items())
            raise ValueError(
                f"observation.state needs {', '.join(missing)}, which nothing publishes ({who}). "
                "Add a tracker that publishes it (a hardware.drivers.signals.SignalSource passed as a source), "
                "or map it to a published name with state_aliases"
            )
        return StateLayout(tuple(names), tuple(providers), tuple(published))

    @property
    def needed(self) -> tuple[str, ...]:
        """Providers that must be read to assemble the state, in first-use order."""
        return tuple(dict.fromkeys(self.providers))

    def assemble(self, readings: Mapping[str, Mapping[str, float]]) -> np.ndarray:
        """The state vector (D,) float32 from each provider's reading (provider -> name -> value)."""
        values = []
        for name, provider, source_name in zip(self.names, self.providers, self.published):
            reading = readings[provider]
            if source_name not in reading:
                raise RuntimeError(
                    f"{provider} promised {source_name!r} (for observation.state entry {name!r}) "
                    f"but its reading has only {sorted(reading)}"
                )
            values.append(float(reading[source_name]))
        return np.asarray(values, dtype=np.float32)
