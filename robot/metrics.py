"""Metrics sinks. Names follow CleanRL: ``losses/denoise``, ``charts/success``, ``ope/amq``.

A sink receives ``log(metrics, step)`` calls; :class:`JsonlMetrics` appends one JSON
object per call and flushes, so a killed run keeps every line but possibly the last,
which :func:`read_metrics` skips.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Iterable, Mapping, Protocol


class MetricsSink(Protocol):
    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class JsonlMetrics:
    """Append-only JSON lines: ``{"step": 10, "time": 1712.3, "losses/denoise": 0.12}``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        row = {"step": int(step), "time": time.time()}
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

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for sink in self.sinks:
            sink.log(metrics, step)

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
            rows.append({k: (float(v) if isinstance(v, str) and v in ("nan", "inf", "-inf") else v) for k, v in row.items()})
    return rows


def series(rows: Iterable[Mapping[str, float]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one metric across rows that have it."""
    steps, values = [], []
    for row in rows:
        if key in row:
            steps.append(int(row["step"]))
            values.append(float(row[key]))
    return steps, values
