"""An offline round survives a crash, an e-stop or a quit mid-way: what finished is kept, and rerunning resumes.

Robot time is precious, so an offline round writes each thing the moment it finishes, in its ``round-M`` folder:

- each robot episode, as it ends: ``episodes/KIND-SEED.npz`` (:class:`RoundJournal`; KIND is ``rollout`` or
  ``verify-<policy>``), a rollout's frames included, then a rollout's frames to the run's store. A rerun runs
  only the seeds with no file, appends a rollout whose file is written but which the store lacks (a kill
  between the two writes), and the store never holds an episode twice;
- the critics (``critics``, as before), so a rerun loads them instead of fitting them again;
- the PPO stage's outcome: the accepted policy (``accepted``), the round's lines of the run's ``gate.jsonl``, then its
  gate decisions (``ppo.json``, the marker written last), so a rerun goes straight to the verification episodes.

Under torchrun (sim only) each rank commits the rollouts it runs to the journal, and rank 0 stores them all once every
rank's are in; rank 0's view of the critics and the PPO outcome on disk holds for every rank. The verification
episodes there are sim episodes that are not stored: a rerun runs them again.

Every episode's noise comes from its seed and every random stage reseeds from the round, so a resumed round
takes the steps an uninterrupted one would. The journal goes once the round's report is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from robot.config import from_dict, to_dict
from robot.store import ZarrEpisodeStore
from robot.types import EpisodeMeta
from workflow.ope import GateDecision
from workflow.rollout import EpisodeResult

PPO_MARKER = "ppo.json"


class RoundJournal:
    """One round's committed robot episodes, one file each, written atomically as each ends."""

    def __init__(self, round_dir: Path):
        self.path = Path(round_dir) / "episodes"

    def done(self, kind: str) -> dict[int, EpisodeResult]:
        """The episodes of ``kind`` an interrupted run finished, by seed."""
        out = {}
        for file in sorted(self.path.glob(f"{kind}-*.npz")):
            with np.load(file, allow_pickle=False) as saved:
                meta = json.loads(str(saved["meta"]))
                frames = {k.removeprefix("frames/"): saved[k] for k in saved.files if k.startswith("frames/")}
            out[int(meta["seed"])] = EpisodeResult(frames=frames, **meta)
        return out

    def save(self, kind: str, result: EpisodeResult, *, keep_frames: bool) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        meta = {"seed": result.seed, "success": bool(result.success), "ret": float(result.ret), "length": int(result.length), "terms": result.terms,
                "inference_ms": list(result.inference_ms), "safety": result.safety, "seconds": result.seconds}  # fmt: skip
        arrays = {f"frames/{k}": v for k, v in result.frames.items()} if keep_frames else {}
        final = self.path / f"{kind}-{result.seed}.npz"
        tmp = final.with_name(f".{final.stem}.tmp-{os.getpid()}.npz")
        np.savez(tmp, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, final)

    def clear(self) -> None:
        """Forget the round's episodes (its report holds what they decided)."""
        shutil.rmtree(self.path, ignore_errors=True)


    def store_start(self, num_episodes: int) -> int:
        """How many episodes the store held before the round's first rollout (the first call's ``num_episodes``)."""
        file = self.path / "store-start.json"
        if not file.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"episodes": num_episodes}))
            os.replace(tmp, file)
        return int(json.loads(file.read_text())["episodes"])


class RolloutCommit:
    """Commits a round's rollouts: the journal, then the store, which gets each seed once (the round's episodes
    are those after :meth:`RoundJournal.store_start`; the demonstrations may hold the same seeds from another run)."""

    def __init__(self, journal: RoundJournal, kind: str, store: ZarrEpisodeStore, meta: EpisodeMeta):
        self.journal, self.kind, self.store, self.meta = journal, kind, store, meta
        self.stored = {m.seed for m in store.metas[journal.store_start(store.num_episodes) :]}

    def restore(self, done: dict[int, EpisodeResult]) -> None:
        """Append the committed episodes a kill kept out of the store (between the two writes), in seed order."""
        for seed in sorted(done):
            self._append(done[seed])

    def __call__(self, result: EpisodeResult) -> None:
        self.journal.save(self.kind, result, keep_frames=True)
        self._append(result)

    def _append(self, result: EpisodeResult) -> None:
        if result.seed in self.stored or not result.frames:
            return
        meta = EpisodeMeta(**{**self.meta.to_dict(), "success": bool(result.success), "seed": result.seed})
        self.store.append_episode(result.frames, meta)
        self.stored.add(result.seed)


def save_gate_record(run_dir: Path, m: int, decisions: list[GateDecision]) -> None:
    """Round ``m``'s gate decisions as its lines of ``run_dir/gate.jsonl`` (atomically), replacing any a PPO stage
    redone after a kill wrote before: every round's lines once, in round order."""
    final = Path(run_dir) / "gate.jsonl"
    kept = [line for line in (final.read_text().splitlines() if final.is_file() else []) if json.loads(line)["round"] < m]
    lines = kept + [json.dumps({"round": m, **to_dict(d), "gain": d.gain}) for d in decisions]
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, final)


def save_ppo_outcome(round_dir: Path, decisions: list[GateDecision], warning: str | None) -> None:
    """The PPO stage's gate decisions, written (atomically) after its accepted policy: the stage is done."""
    final = Path(round_dir) / PPO_MARKER
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"decisions": [to_dict(d) for d in decisions], "warning": warning}, indent=2))
    os.replace(tmp, final)


def load_ppo_outcome(round_dir: Path) -> tuple[list[GateDecision], str | None] | None:
    """``(decisions, warning)`` of a finished PPO stage, or None when it has not finished."""
    file = Path(round_dir) / PPO_MARKER
    if not file.is_file() or not (Path(round_dir) / "accepted" / "checkpoint.json").is_file():
        return None
    saved = json.loads(file.read_text())
    return [from_dict(GateDecision, d) for d in saved["decisions"]], saved["warning"]
