"""Shared mechanics of every stage: the run directory, seeding, threads, progress.

A run directory::

    RUN/config.json           the resolved stage config
    RUN/metrics.jsonl         every logged metric (robot.metrics.JsonlMetrics)
    RUN/checkpoints/state     the latest resumable training state (overwritten atomically)
    RUN/checkpoints/step-N    policy snapshots (for diagnostics and checkpoint choice)
    RUN/policy                the stage's resulting policy checkpoint
    RUN/report.json           the stage's report once it finished
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot.config import from_dict, read_json_object, save_json, to_dict
from robot.metrics import JsonlMetrics, MultiSink
from robot.report import bar_interval


def _with_defaults(cls: type, saved: dict) -> dict:
    """A saved config dict with the fields added since it was written filled in with their defaults,
    so a run started before an upgrade still resumes; a dict that does not parse is returned as is."""
    try:
        return to_dict(from_dict(cls, saved))
    except (TypeError, ValueError):
        return saved


def state_dir(run: str | os.PathLike) -> Path:
    """Where a run directory keeps the state a rerun resumes from (``RunDir.state_dir``)."""
    return Path(run) / "checkpoints" / "state"


class RunDir:
    """``write=False`` (every rank but 0 of a distributed job) names the same paths but writes nothing."""

    def __init__(self, path: str | os.PathLike, config: Any, *, write: bool = True):
        self.path = Path(path)
        self.write = write
        if not write:
            self.metrics = MultiSink([])  # logs nowhere
            return
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        config_path = self.path / "config.json"
        if config_path.exists():
            free = set(getattr(type(config), "RESUME_MAY_CHANGE", ()))  # e.g. where the work runs, not what it computes
            previous = {k: v for k, v in _with_defaults(type(config), read_json_object(config_path)).items() if k not in free}
            now = {k: v for k, v in to_dict(config).items() if k not in free}
            if previous != now:
                changed = sorted(k for k in set(previous) | set(now) if previous.get(k) != now.get(k))
                raise ValueError(
                    f"{self.path} holds a run with another config (differs in {', '.join(changed)}); "
                    "resume with the same options or choose a new --out"
                )
        save_json(config, config_path)
        self._record_safety_overrides()
        self.metrics = JsonlMetrics(self.path / "metrics.jsonl")

    def _record_safety_overrides(self) -> None:
        """The ``--safety-*`` overrides the command ran under, next to its config (``safety_overrides.json``)."""
        from hardware.registry import overrides_in_force

        overrides = overrides_in_force()
        if overrides:
            (self.path / "safety_overrides.json").write_text(json.dumps(overrides, indent=2) + "\n")

    @property
    def state_dir(self) -> Path:
        return state_dir(self.path)

    @property
    def policy_dir(self) -> Path:
        return self.path / "policy"

    def snapshot_dir(self, step: int) -> Path:
        return self.path / "checkpoints" / f"step-{step:07d}"

    def snapshots(self) -> list[tuple[int, Path]]:
        out = []
        for p in sorted((self.path / "checkpoints").glob("step-*")):
            if (p / "checkpoint.json").is_file():
                out.append((int(p.name.split("-")[1]), p))
        return out

    def write_report(self, report: Any) -> None:
        if not self.write:
            return
        data = to_dict(report) if hasattr(report, "__dataclass_fields__") else report
        (self.path / "report.json").write_text(json.dumps(data, indent=2) + "\n")

    def close(self) -> None:
        self.metrics.close()


def seed_everything(seed: int) -> np.random.Generator:
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def resolve_device(device: str) -> torch.device:
    """Validate the device string; never assume CUDA is there."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this machine has no CUDA GPU; use --device cpu")
    return dev


def rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """numpy and torch RNG states as checkpoint-storable values."""
    state = rng.bit_generator.state
    return {"numpy": json.dumps(state), "torch": torch.get_rng_state()}


def restore_rng(rng: np.random.Generator, saved: dict[str, Any]) -> None:
    rng.bit_generator.state = json.loads(saved["numpy"])
    torch.set_rng_state(saved["torch"].to(torch.uint8))


def progress(total: int, initial: int, desc: str, enabled: bool = True):
    """A progress bar on stderr: redrawn each second on a terminal; in a log file once a minute, its postfix
    (loss, success) included, which tqdm would otherwise redraw at every ``set_postfix``. Under torchrun only
    rank 0 draws it: one voice."""
    from tqdm.auto import tqdm

    enabled = enabled and int(os.environ.get("RANK", "0")) == 0

    interval = bar_interval(1.0)
    if interval == 1.0:
        return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=interval)

    class LogFileBar(tqdm):
        def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):  # noqa: ARG002 (the timed redraw shows it)
            super().set_postfix(ordered_dict, refresh=False, **kwargs)

    return LogFileBar(total=total, initial=initial, desc=desc, disable=not enabled, dynamic_ncols=True, mininterval=interval)


def finite_episodes(path: str | os.PathLike, data: dict[str, np.ndarray], episode_ends: np.ndarray, episodes: list[int], *, drop: bool) -> list[int]:
    """``episodes`` of a store's loaded ``data`` whose frames are all finite.

    One NaN frame trains a NaN policy, so an episode with NaN or inf is refused with a ValueError that
    names it and its keys, or, with ``drop``, left out with a line on stderr saying which.
    """
    from robot.store import nonfinite_episodes

    bad = {e: keys for e, keys in nonfinite_episodes(data, episode_ends).items() if e in set(episodes)}
    if not bad:
        return list(episodes)
    named = ", ".join(f"{e} ({', '.join(keys)})" for e, keys in list(bad.items())[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    if not drop:
        raise ValueError(f"{path}: {len(bad)} episode(s) hold NaN or inf: {named}; repair them, or pass --drop-nonfinite to train without them")
    print(f"warning: {path}: left out {len(bad)} episode(s) holding NaN or inf: {named}", file=sys.stderr)
    return [e for e in episodes if e not in bad]


def check_finite_loss(loss: float, what: str, step: int) -> None:
    """Stop a stage at its first non-finite loss, before the weights it would write are NaN too."""
    if not math.isfinite(loss):
        raise ValueError(f"{what}: the loss became {loss} at step {step}; stopped without writing a policy "
                         "(the last finite snapshot stays in the run's checkpoints/): lower the learning rate or check the data")  # fmt: skip


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning rate rises linearly over ``warmup`` steps, then falls to 0 at ``steps`` along a half cosine
    (step the scheduler after each optimiser step)."""

    def scale(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)
