"""Training curves (metrics.jsonl rows) to a recording, one series per metric and stage/round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping

import numpy as np

from robot.metrics import AXES, display_name
from robot.viewer.layout import part, rerun_sdk

if TYPE_CHECKING:
    from rerun import RecordingStream


def metric_keys(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The numeric metrics of ``read_metrics`` rows by display name (an offline round's as ``round-M/<name>``)."""
    return sorted({display_name(row, k) for row in rows for k, v in row.items() if k not in AXES and isinstance(v, (int, float))})


def log_metrics(rec: RecordingStream, rows: Iterable[Mapping[str, Any]], *, prefix: str = "train") -> list[str]:
    """Log ``robot.metrics.read_metrics`` rows as scalar series ``<prefix>/<metric>`` on ``train_step``.

    ``losses/denoise`` becomes ``train/losses/denoise``; a row's wall-clock ``time`` also
    gives a ``wall_time`` timeline. Returns the metric names logged.
    """
    rr = rerun_sdk()
    rows = [{**{a: row[a] for a in ("step", "time") if a in row}, **{display_name(row, k): v for k, v in row.items() if k not in AXES}} for row in rows]
    keys = metric_keys(rows)
    for key in keys:
        have = [row for row in rows if isinstance(row.get(key), (int, float))]
        index = [rr.TimeColumn("train_step", sequence=[int(r["step"]) for r in have])]
        if all("time" in r for r in have):
            index.append(rr.TimeColumn("wall_time", timestamp=[float(r["time"]) for r in have]))
        path = "/".join([prefix, *(part(p) for p in key.split("/"))])
        rec.log(path, rr.SeriesLines(names=key.split("/")[-1]), static=True)
        rec.send_columns(path, indexes=index, columns=rr.Scalars.columns(scalars=np.asarray([r[key] for r in have], np.float64)))
    return keys
