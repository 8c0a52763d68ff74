"""A run directory read back as stages, each with its curves, checkpoints and gate record.

Stages a run can hold (``StageData.kind``):

- ``imitation``: an imitation run (also each offline round's ``round-M/imitation``);
- ``critics``: one offline round's IQL critics (``critic/*_rM`` metrics, snapshots in
  ``round-M/critic-checkpoints``);
- ``ppo``: one offline round's PPO and AM-Q gate (``gate.jsonl``, ``ope/*_rM``);
- ``online``: an online RL run (one row per iteration);
- ``distill``: a consistency-distillation run.

A pipeline directory (``pipeline.json``) holds the stages of its ``imitation``,
``offline`` and ``online`` runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot.config import read_json_object
from robot.metrics import AXES, read_metrics

@dataclass(frozen=True)
class Curve:
    """One metric over training steps; values may hold NaN or inf (a diverged run)."""

    name: str
    steps: np.ndarray  # (N,) int
    values: np.ndarray  # (N,) float

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class StageData:
    stage: str
    """Name in the verdict table: ``imitation``, ``offline/round-0/critics``, ..."""
    kind: str
    """imitation | critics | ppo | online | distill (which rules apply)."""
    path: Path
    """Run directory the stage's metrics live in."""
    curves: dict[str, Curve]
    """Metric name (round suffix removed) -> curve."""
    checkpoints: dict[int, Path] = field(default_factory=dict)
    """Step -> checkpoint directory: the choices a rule has."""
    final: Path | None = None
    """What the stage handed on (its policy, the round's critics or accepted policy)."""
    gate: list[dict[str, Any]] = field(default_factory=list)
    """AM-Q gate decisions of a ``ppo`` stage (rows of gate.jsonl)."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's config.json."""
    report: dict[str, Any] = field(default_factory=dict)
    """What the stage measured and decided itself (its report.json; a ``ppo`` stage's is its round's):
    an online run's ``selection`` and ``selected``, an offline round's rollout check."""


def curves_from_rows(rows: list[dict[str, Any]], *, round_index: int | None = None) -> dict[str, Curve]:
    """Curves of every numeric metric in ``read_metrics`` rows; with ``round_index``, only that offline round's rows."""
    steps: dict[str, list[int]] = {}
    values: dict[str, list[float]] = {}
    for row in rows:
        if round_index is not None and row.get("round") != round_index:
            continue
        for key, value in row.items():
            if key in AXES or not isinstance(value, (int, float)):
                continue
            steps.setdefault(key, []).append(int(row["step"]))
            values.setdefault(key, []).append(float(value))
    return {k: Curve(k, np.asarray(steps[k], dtype=np.int64), np.asarray(values[k], dtype=np.float64)) for k in steps}


def read_gate(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an offline run's gate.jsonl (one per AM-Q check: round, update, j_reference, j_candidate, threshold, accepted, gain)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue
    return rows


def _snapshots(folder: Path) -> dict[int, Path]:
    return {int(p.name.split("-")[1]): p for p in sorted(folder.glob("step-*")) if (p / "checkpoint.json").is_file()}


def _json(f: Path) -> dict[str, Any]:
    """A run's config.json or report.json; {} when it has none (yet)."""
    return read_json_object(f) if f.is_file() else {}


def run_kind(path: Path) -> str:
    """What a run directory holds, from its files and config keys."""
    if (path / "pipeline.json").is_file():
        return "pipeline"
    config = _json(path / "config.json")
    if not config:
        raise FileNotFoundError(f"{path} is not a run directory (no config.json or pipeline.json); pass a directory written by `robot train` or `robot pipeline`")
    if "eval_every" in config:
        return "imitation"
    if "rounds" in config:
        return "offline"
    if "iterations" in config:
        return "online"
    if "steps" in config and "policy" in config:
        return "distill"
    raise ValueError(f"{path}/config.json matches no stage (keys {', '.join(sorted(config))}); diagnose imitation, offline, online or distill runs")


def load_stages(path: str | Path, *, prefix: str = "") -> list[StageData]:
    """Every stage in a run or pipeline directory, in training order."""
    path = Path(path)
    kind = run_kind(path)
    if kind == "pipeline":
        stages = []
        for name in ("imitation", "offline", "online", "distill"):
            if (path / name / "config.json").is_file():
                stages += load_stages(path / name, prefix=f"{name}")
        return stages
    rows = read_metrics(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    name = prefix or kind
    config = _json(path / "config.json")
    if kind in ("imitation", "online", "distill"):
        final = path / "policy" if (path / "policy" / "checkpoint.json").is_file() else None
        return [StageData(name, kind, path, curves_from_rows(rows), _snapshots(path / "checkpoints"), final, config=config, report=_json(path / "report.json"))]
    return _offline_stages(path, rows, name, config)


def _offline_stages(path: Path, rows: list[dict[str, Any]], name: str, config: dict[str, Any]) -> list[StageData]:
    rounds = sorted({int(row["round"]) for row in rows if "round" in row} | {int(p.name.split("-")[1]) for p in path.glob("round-*")})
    gate = read_gate(path / "gate.jsonl")
    stages = []
    for m in rounds:
        round_dir = path / f"round-{m}"
        curves = curves_from_rows(rows, round_index=m)
        critic_curves = {k: c for k, c in curves.items() if k.startswith(("critic/", "losses/q_td", "losses/v_expectile", "losses/total", "values/"))}
        ppo_curves = {k: c for k, c in curves.items() if k not in critic_curves}
        critics_final = round_dir / "critics" if (round_dir / "critics" / "checkpoint.json").is_file() else None
        stages.append(StageData(f"{name}/round-{m}/critics", "critics", path, critic_curves, _snapshots(round_dir / "critic-checkpoints"), critics_final, config=config))
        accepted = round_dir / "accepted" if (round_dir / "accepted" / "checkpoint.json").is_file() else None
        stages.append(StageData(f"{name}/round-{m}/ppo", "ppo", path, ppo_curves, _ppo_checkpoints(path, m, config), accepted, [g for g in gate if g.get("round") == m],
                                config, _json(round_dir / "report.json")))  # fmt: skip
        if (round_dir / "imitation" / "config.json").is_file():
            stages += load_stages(round_dir / "imitation", prefix=f"{name}/round-{m}/imitation")
    return stages


def _ppo_checkpoints(path: Path, m: int, config: dict[str, Any]) -> dict[int, Path]:
    """A PPO stage's choices: the round's starting policy (update 0) and every candidate its gate accepted."""
    start = config.get("policy") if m == 0 else _json(path / f"round-{m - 1}" / "report.json").get("policy")
    choices = {}
    for folder in (Path(start), Path(start) / "policy") if start else ():  # a run directory or its policy checkpoint
        if (folder / "checkpoint.json").is_file():  # not when moved or deleted since the run
            choices[0] = folder
    candidates = path / f"round-{m}" / "candidates"
    return choices | {int(p.name.split("-")[1]): p for p in sorted(candidates.glob("update-*")) if (p / "checkpoint.json").is_file()}
