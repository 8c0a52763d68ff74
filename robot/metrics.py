"""Metrics sinks. Names follow CleanRL: ``losses/denoise``, ``charts/success``, ``ope/amq``.

A sink receives ``log(metrics, step, round=None)`` calls; :class:`JsonlMetrics` appends one JSON
object per call and flushes, so a killed run keeps every line but possibly the last,
which :func:`read_metrics` skips. An offline round's metrics carry the round as a field of the
row (``{"step": 40, "round": 1, "losses/ppo": ...}``), not in their names.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from pathlib import Path
from typing import Iterable, Mapping, Protocol


AXES = ("step", "time", "round")
"""Row fields that place a metric (training step, wall clock, offline round) rather than measure anything."""
OLD_ROUND_SUFFIX = re.compile(r"^(.*)_r(\d+)$")
"""How runs before the ``round`` field named a round's metrics (``losses/ppo_r1``); read back as fields."""


class MetricsSink(Protocol):
    def log(self, metrics: Mapping[str, float], step: int, *, round: int | None = None) -> None: ...

    def close(self) -> None: ...


class JsonlMetrics:
    """Append-only JSON lines: ``{"step": 10, "time": 1712.3, "losses/denoise": 0.12}``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def log(self, metrics: Mapping[str, float], step: int, *, round: int | None = None) -> None:
        row: dict[str, float | int | str] = {"step": int(step), "time": time.time(), **({} if round is None else {"round": int(round)})}
        for key, value in metrics.items():
            v = float(value)
            row[key] = v if math.isfinite(v) else str(v)  # JSON has no NaN; keep it visible as a string
        self._file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "JsonlMetrics":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MultiSink:
    """Fan one ``log`` call out to several sinks (JSON lines + Rerun, say)."""

    def __init__(self, sinks: Iterable[MetricsSink]):
        self.sinks = list(sinks)

    def log(self, metrics: Mapping[str, float], step: int, *, round: int | None = None) -> None:
        for sink in self.sinks:
            sink.log(metrics, step, round=round)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, float]]:
    """Every complete row of a JSON-lines metrics file (a torn last line is skipped)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.extend(_rounds_as_fields({k: (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v) for k, v in row.items()}))
    return rows


def _rounds_as_fields(row: dict) -> list[dict]:
    """An old row whose names carried their round (``x_r1``) as one row per round with a ``round`` field."""
    if "round" in row or not any(OLD_ROUND_SUFFIX.match(k) for k in row if k not in AXES):
        return [row]
    axes = {k: row[k] for k in AXES if k in row}
    by_round: dict[int, dict] = {}
    for key, value in row.items():
        match = OLD_ROUND_SUFFIX.match(key) if key not in AXES else None
        if match:
            by_round.setdefault(int(match.group(2)), {**axes, "round": int(match.group(2))})[match.group(1)] = value
        elif key not in AXES:
            by_round.setdefault(-1, dict(axes))[key] = value
    return [r for m, r in sorted(by_round.items())]


def display_name(row: Mapping, key: str) -> str:
    """A metric's name for a plot: ``round-1/losses/ppo`` for an offline round's, the name itself otherwise."""
    return f"round-{int(row['round'])}/{key}" if "round" in row else key


def series(rows: Iterable[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric across rows that have it."""
    steps, values = [], []
    for row in rows:
        if key in row:
            steps.append(int(row["step"]))
            values.append(float(row[key]))
    return steps, values
