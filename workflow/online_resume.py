"""Online RL survives a crash, an e-stop or a quit: what finished is kept, and rerunning the command resumes.

Robot time is precious, so two things are written the moment they finish:

- each episode, as it ends: its frames and its chunk decisions to ``checkpoints/episodes/ITERATION-SEED.pt``
  (:class:`EpisodeLog`), then its frames to the run's store, so a rerun collects only the episodes the
  interrupted iteration had not run, and the store never holds an episode twice;
- each iteration's update, once done: the learner's whole state (``OnlineLearner.state_dict``: policy, value
  function, one-step head, their optimisers, the minibatch and distillation generators) to
  ``checkpoints/state`` (:func:`save_state`), so a rerun starts at the next iteration and no update is applied
  twice.

Every episode's noise comes from its own seed, so a resumed run takes the steps an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from policies.diffusion import Chain, ChainSampler
from robot.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from workflow.online_collect import Collected, Decisions
from workflow.online_update import OnlineLearner

STATE_KIND = "online-state"


@dataclass
class Progress:
    """Where an online run stands."""

    iteration: int
    """The next iteration to run."""
    first_seed: int
    """Seed of the run's first rollout episode."""
    successes: list[float]
    """Each finished iteration's rollout success."""
    last_cond: torch.Tensor | None
    """(N, Dc) the last finished iteration's states (the final distillation's, without ``distill_data``)."""
    robot_seconds: float = 0.0
    """Wall time the robot spent on the finished iterations' episodes."""


def save_state(path: Path, progress: Progress, learner: OnlineLearner) -> None:
    """Write the learner's whole state after an update (atomically: a kill leaves the previous one)."""
    extra = {"iteration": progress.iteration, "first_seed": progress.first_seed, "successes": progress.successes, "robot_seconds": progress.robot_seconds}
    modules = {"last": {"cond": progress.last_cond}} if progress.last_cond is not None else {}
    save_checkpoint(path, Checkpoint(kind=STATE_KIND, config={}, modules=modules, extra=extra, state=learner.state_dict()))


def load_state(path: Path, learner: OnlineLearner) -> Progress | None:
    """Restore what :func:`save_state` wrote into the freshly built learner; None when there is nothing to resume."""
    if not (path / "checkpoint.json").is_file():
        return None
    saved = load_checkpoint(path, kind=STATE_KIND)
    learner.load_state_dict(saved.state, what=str(path))
    last = saved.modules.get("last", {}).get("cond")
    extra = saved.extra
    return Progress(int(extra["iteration"]), int(extra["first_seed"]), [float(s) for s in extra["successes"]], last, float(extra.get("robot_seconds", 0.0)))


def finished_iterations(path: Path) -> int:
    """How many iterations the state :func:`save_state` wrote at ``path`` has finished (0: none written)."""
    if not (path / "checkpoint.json").is_file():
        return 0
    return int(load_checkpoint(path, kind=STATE_KIND).extra["iteration"])


class EpisodeLog:
    """The episodes an unfinished iteration has collected, one file each, written atomically as each ends."""

    def __init__(self, path: Path, sampler: ChainSampler):
        self.path, self.sampler = path, sampler

    def save(self, iteration: int, episode: Collected) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        d = episode.decisions
        chains = d.chains
        record = {
            "seed": episode.seed, "success": episode.success, "label": episode.label, "interventions": episode.interventions, "stop": episode.stop,
            "seconds": episode.seconds,
            "frames": {k: torch.from_numpy(v) for k, v in episode.frames.items()},
            "cond": torch.cat(d.cond) if d.cond else None, "next_cond": torch.cat(d.next_cond) if d.next_cond else None,
            "samples": torch.cat([c.samples for c in chains]) if chains else None, "log_probs": torch.cat([c.log_probs for c in chains]) if chains else None,
            "timesteps": chains[0].timesteps if chains else None,
            "rewards": list(d.rewards), "discounts": list(d.discounts), "terminal": list(d.terminal), "last": list(d.last),
        }  # fmt: skip
        final = self.path / f"{iteration:05d}-{episode.seed}.pt"
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        torch.save(record, tmp)
        os.replace(tmp, final)

    def load(self, iteration: int) -> dict[int, Collected]:
        """This iteration's committed episodes by seed."""
        out = {}
        for file in sorted(self.path.glob(f"{iteration:05d}-*.pt")):
            r = torch.load(file, weights_only=True)
            d = Decisions(rewards=r["rewards"], discounts=r["discounts"], terminal=r["terminal"], last=r["last"])
            if r["cond"] is not None:
                d.cond = list(r["cond"].split(1))
                d.next_cond = list(r["next_cond"].split(1))
                d.chains = [Chain(s, lp, r["timesteps"], self.sampler) for s, lp in zip(r["samples"].split(1), r["log_probs"].split(1))]
            frames = {k: v.numpy() for k, v in r["frames"].items()}
            out[int(r["seed"])] = Collected(int(r["seed"]), frames, bool(r["success"]), d, r["label"], int(r["interventions"]), r["stop"], float(r["seconds"]))
        return out

    def clear_before(self, iteration: int) -> None:
        """Forget the episodes of finished iterations (their update is in the state)."""
        for file in self.path.glob("*.pt"):
            if int(file.name.split("-")[0]) < iteration:
                file.unlink()
