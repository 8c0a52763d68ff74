"""The offline round's IQL critics on disk: ``round-M/critics`` and the diagnostics' snapshots share one layout,
written and read here only (evaluation views, online RL's value warm start, ``robot critic-ranking``)."""

from __future__ import annotations

from pathlib import Path

from policies.critics import CriticConfig, IqlCritics
from robot.checkpoint import Checkpoint, load_checkpoint, load_module_state, save_checkpoint
from robot.config import from_dict, to_dict

KIND = "iql-critics"


def save_critics(path: str | Path, critics: IqlCritics) -> Path:
    """Critics over features of ``critics.feature_dim`` scoring executed chunks of ``critics.action_size`` numbers."""
    config = {"critic": to_dict(critics.config), "feature_dim": critics.feature_dim, "action_dim": critics.action_size}
    return save_checkpoint(path, Checkpoint(kind=KIND, config=config, modules={"critics": critics.state_dict()}))


def load_critics(path: str | Path) -> IqlCritics:
    """Critics saved by :func:`save_critics` (an offline round's ``runs/x/round-M/critics``), in eval mode."""
    ckpt = load_checkpoint(path, kind=KIND)
    critics = IqlCritics(ckpt.config["feature_dim"], ckpt.config["action_dim"], config=from_dict(CriticConfig, ckpt.config["critic"]))
    load_module_state(critics, ckpt.modules["critics"], what=str(path))
    return critics.eval()
