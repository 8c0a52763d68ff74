"""``robot view``: stored episodes (and a run's training curves) as Rerun recordings.

Each episode becomes one recording of the ``robot-view`` application (recording id
``<store name>/episode-<i>``), so the viewer lists the episodes side by side and one
blueprint lays out all of them. ``--metrics`` adds one ``robot-train`` recording with
the run's curves on the ``train_step`` timeline. With ``save`` everything goes into
one .rrd file; without it, into a viewer (a window, or a local gRPC server when
there is no display).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robot.metrics import read_metrics
from robot.viewer import RecordingSet, episode_blueprint, log_episode, log_metrics, metric_keys, metrics_blueprint, served_url
from robot.store import ZarrEpisodeStore

EPISODES_APP = "robot-view"
METRICS_APP = "robot-train"


@dataclass(frozen=True)
class ViewReport:
    """What was logged and where it went."""

    store: Path
    episodes: tuple[int, ...]
    metrics: tuple[str, ...]
    save: Path | None
    url: str | None  # the gRPC URL served when there was no display (None: a file or a viewer window)

    def summary(self) -> str:
        what = f"{len(self.episodes)} episode{'s' * (len(self.episodes) != 1)} of {self.store}"
        if self.metrics:
            what += f" and {len(self.metrics)} training curves"
        if self.save is not None:
            size = self.save.stat().st_size / 1e6
            return f"wrote {what} to {self.save} ({size:.2f} MB); open it with `rerun {self.save}`"
        return f"sent {what} to the Rerun viewer"


def metrics_file(path: Path) -> Path:
    """``RUN_DIR/metrics.jsonl`` for a run directory, or the file itself."""
    path = Path(path)
    candidate = path / "metrics.jsonl" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl here; pass a run directory written by `robot train` (or its metrics.jsonl)")
    return candidate


def view_store(
    store_path: Path,
    episode: int | None = None,
    all: bool = False,
    save: Path | None = None,
    metrics: Path | None = None,
) -> ViewReport:
    """Log ``episode`` (default 0; negative counts from the end) or ``all`` episodes of a store,
    plus a run's metrics, to ``save`` or to a viewer."""
    if all and episode is not None:
        raise ValueError(f"--episode {episode} and --all exclude each other; pass one")
    store = ZarrEpisodeStore.open(store_path)
    if store.num_episodes == 0:
        raise ValueError(f"{store_path}: the store has no episodes yet; record some with `robot record --out {store_path}`")
    wanted = list(range(store.num_episodes)) if all else [episode or 0]
    if not all and not -store.num_episodes <= wanted[0] < store.num_episodes:
        raise ValueError(f"{store_path}: no episode {wanted[0]}; the store has {store.num_episodes} (0..{store.num_episodes - 1}, or -1 for the last)")
    indices = tuple(i % store.num_episodes for i in wanted)
    rows = read_metrics(metrics_file(metrics)) if metrics is not None else []

    blueprint = episode_blueprint(store.features)
    name = Path(store_path).name
    logged: list[str] = []
    with RecordingSet(save=save, spawn=save is None) as recordings:
        for i in indices:
            ep = store.episode(i)
            label = f"{name} episode {i} ({ep.meta.source}, {'success' if ep.meta.success else 'failure'})"
            rec = recordings.new(EPISODES_APP, recording_id=f"{name}/episode-{i}", name=label, blueprint=blueprint)
            log_episode(rec, ep, store.features)
        if metrics is not None:
            run = Path(metrics).name if Path(metrics).is_dir() else Path(metrics).parent.name
            rec = recordings.new(METRICS_APP, recording_id=f"{run}/metrics", name=f"{run} training curves", blueprint=metrics_blueprint(metric_keys(rows)))
            logged = log_metrics(rec, rows)
    return ViewReport(Path(store_path), indices, tuple(logged), Path(save) if save is not None else None, served_url())
