"""One offline round on a robot spec, evaluated on sim seeds: does a round on an arm (or its stand-in) match sim?

    python -m bench.robot_round --policy P --data DEMOS.zarr --task lift --robot ur5e:standin:lift --out OUT
        [--episodes 200] [--first-seed 2000] [--against OTHER/offline.paired.json] [budget flags]

Runs ONE offline round (``workflow.offline.train_offline``) from the imitation policy ``--policy`` trained on
``--data``, its rollouts and verification episodes on ``--robot`` (any spec ``robot deploy`` takes: ``sim:lift``,
``ur5e:standin:lift``, ``franka:HOST``...) through deploy's control stack, unthrottled by default (``--hz 0``),
with the scripted operator: it takes over ``--takeover-rate`` of the episodes still running after
``--drift-after`` ticks for ``--takeover-steps`` ticks, and the task scores the episodes (``--operator-reward``).
The round's run directory is OUT/round (a killed benchmark resumes it: rerun the same command).

Then the start and the round's policy run deterministically in sim on the same ``--episodes`` seeds from
``--first-seed`` (apart from the round's rollout and verification seeds and the demonstrations'), cached as
bench.recipe's paired json: OUT/start.paired.json and OUT/offline.paired.json (per seed: success, length,
return; reused while the policy's files and the seeds are the same, so a copied start.paired.json spares a second
run evaluating the same start). It prints one table (the round's rollouts, gate, verification, robot minutes, the
result with its 95% Wilson interval and its paired wins and losses against the start), written with the numbers to
OUT/robot_round.json; the round's own log goes to stderr. ``--against`` pairs this run's result with another run's
``offline.paired.json`` (the same round on another robot): wins, losses and the exact two-sided sign test.

The defaults are session 19's lift settings (docs/RESULTS.md, "An offline round on vendor stand-ins against the
same in sim"): ``chains_per_state`` 4, ``rollout_std`` 0.1, PPO batch 128, OPE horizon 5, 30 rollouts, 2000 critic steps, 150 PPO updates gated every 50; the
critics and the latent dynamics are the pipeline's (``workflow.pipeline``). Verification is ``OfflineConfig``'s (looks of
50 episodes per policy up to 200, p 0.1 at a look; session 19 ran one look of 50 at p 0.25).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from bench.recipe import StageEpisodes, paired_episodes
from robot.config import to_dict
from robot.report import format_table
from workflow.paired import mean_steps_to_success, sign_test_p, wilson_interval, wins_losses


def round_config(a: argparse.Namespace):
    """The offline round's settings: the flags, and the pipeline's critics and dynamics for the policy's chunk."""
    from policies.critics import CriticConfig
    from policies.dynamics import DynamicsConfig
    from robot.checkpoint import load_checkpoint
    from workflow.offline import OfflineConfig
    from workflow.ope import GateConfig
    from workflow.policy import KIND, policy_dir
    from workflow.takeover import OperatorConfig

    n_action_steps = load_checkpoint(policy_dir(a.policy), kind=KIND).config["policy"]["n_action_steps"]
    return OfflineConfig(
        policy=str(a.policy), data=str(a.data), out=str(a.out / "round"), task=a.task, robot=a.robot, hz=a.hz, max_steps=a.max_steps,
        operator=OperatorConfig(device="scripted", reward=a.operator_reward, takeover_rate=a.takeover_rate, drift_after=a.drift_after,
                                takeover_steps=a.takeover_steps),
        rounds=1, critic=CriticConfig.for_horizon(n_action_steps), critic_steps=a.critic_steps,
        dynamics=DynamicsConfig(hidden_dims=(200, 200, 200), max_epochs=a.dynamics_epochs), ppo_updates=a.ppo_updates, ppo_batch=a.ppo_batch,
        chains_per_state=a.chains_per_state, gate_every=a.gate_every, gate=GateConfig(horizon=a.ope_horizon), rollout_episodes=a.rollouts,
        rollout_std=a.rollout_std, verify_episodes=a.verify_episodes, verify_max_episodes=a.verify_max_episodes, verify_max_p=a.verify_max_p, retrain_steps=0, actor_lr=1e-5, seed=a.seed,
        device=a.device,
    )  # fmt: skip


def check_seeds_apart(config, seeds: range) -> None:
    """Refuse evaluation seeds the round rolls out or verifies on, or the demonstrations were recorded on."""
    from robot.store import ZarrEpisodeStore
    from workflow.offline import verify_seed

    rollouts = range(config.seed + 10_000, config.seed + 10_000 + config.rollout_episodes)
    verification = range(verify_seed(config, 0), verify_seed(config, 0) + config.verify_max_episodes)
    with ZarrEpisodeStore.open(config.data) as store:
        demos = sorted({m.seed for m in store.metas if m.seed is not None} & set(seeds))
    clash = [f"{name} ({r.start}-{r.stop - 1})" for name, r in (("rollouts", rollouts), ("verification", verification))
             if max(r.start, seeds.start) < min(r.stop, seeds.stop)]  # fmt: skip
    clash += [f"demonstrations (seeds {', '.join(map(str, demos[:5]))}{'...' if len(demos) > 5 else ''})"] if demos else []
    if clash:
        raise ValueError(f"evaluation seeds {seeds.start}-{seeds.stop - 1} overlap the round's {', '.join(clash)}: choose another --first-seed")


def rollout_interventions(run: Path) -> tuple[int, int]:
    """``(episodes taken over, operator steps)`` of the round's rollouts in its merged store."""
    import numpy as np

    from robot.store import ZarrEpisodeStore
    from robot.types import INTERVENTION

    taken, steps = 0, 0
    with ZarrEpisodeStore.open(run / "data.zarr") as store:
        for i, meta in enumerate(store.metas):
            if meta.source == "offline-rollout" and INTERVENTION in store.features:
                flags = np.asarray(store.episode(i).data[INTERVENTION]).astype(bool)
                taken, steps = taken + int(flags.any()), steps + int(flags.sum())
    return taken, steps


def paired_line(before: StageEpisodes, after: StageEpisodes) -> str:
    if before.seeds != after.seeds:
        raise ValueError(f"paired results must cover the same seeds: {before.policy} and {after.policy} were evaluated on different ones")
    wins, losses = wins_losses(before.successes, after.successes)
    return f"{wins} won, {losses} lost, p = {sign_test_p(wins, losses):.2g}"


def summarize(a: argparse.Namespace, config, round_minutes: float, start: StageEpisodes, result: StageEpisodes) -> dict:
    """The numbers of the table: the round's report, its gate record, its rollouts, and the paired results."""
    run = Path(config.out)
    r = json.loads((run / "report.json").read_text())["rounds"][0]
    gates = [json.loads(line) for line in (run / "gate.jsonl").read_text().splitlines()] if (run / "gate.jsonl").is_file() else []
    accepted = [g for g in gates if g["accepted"]]
    taken, operator_steps = rollout_interventions(run)
    n, solved = len(result.successes), sum(result.successes)
    wins, losses = wins_losses(start.successes, result.successes)
    return {
        "robot": config.robot or f"sim:{config.task}", "policy": str(a.policy), "round": to_dict(config), "round_minutes": round_minutes,
        "rollouts_success": r["rollouts_success"], "rollouts_taken_over": taken, "operator_steps": operator_steps,
        "gate_checks": r["gate_checks"], "gate_accepted": r["accepted"], "amq_start": gates[0]["j_reference"] if gates else None,
        "amq_kept": accepted[-1]["j_candidate"] if accepted else None, "verify_reference": r["reference_success"], "verify_accepted": r["rollout_success"],
        "verify_wins_losses": r["accepted_wins_losses"], "refused": r["refused"], "robot_minutes": r["robot_minutes"],
        "seeds": [result.seeds[0], result.seeds[-1]], "episodes": n, "success": solved / n, "ci95": list(wilson_interval(solved, n)),
        "mean_length": sum(result.lengths) / n, "mean_steps_to_success": mean_steps_to_success(result.successes, result.lengths),
        "start_success": sum(start.successes) / n, "vs_start": [wins, losses, sign_test_p(wins, losses)],
    }  # fmt: skip


def table(s: dict) -> str:
    pct = lambda x: "-" if x is None else f"{x:.1%}"  # noqa: E731
    verify = "not verified" if s["verify_accepted"] is None else (
        f"{pct(s['verify_reference'])} -> {pct(s['verify_accepted'])} ({s['verify_wins_losses'][0]} won, {s['verify_wins_losses'][1]} lost): "
        + ("refused" if s["refused"] else "kept"))  # fmt: skip
    amq = "" if s["amq_kept"] is None else f", AM-Q {s['amq_start']:.3f} -> {s['amq_kept']:.3f}"
    wins, losses, p = s["vs_start"]
    row = [s["robot"], f"{s['round_minutes'] * 60:.0f} s", f"{pct(s['rollouts_success'])}, {s['rollouts_taken_over']}, {s['operator_steps']}",
           f"{s['gate_accepted']} of {s['gate_checks']} accepted{amq}", verify, round(s["robot_minutes"], 2),
           f"{pct(s['success'])} ({pct(s['ci95'][0])}-{pct(s['ci95'][1])}), mean length {s['mean_length']:.1f}",
           f"{pct(s['start_success'])}: {wins} won, {losses} lost, p = {p:.2g}"]  # fmt: skip
    title = (f"offline round on {s['robot']} from {s['policy']}: {s['round']['rollout_episodes']} rollouts, {s['round']['critic_steps']} critic steps, "
             f"{s['round']['ppo_updates']} PPO updates, {s['round']['verify_episodes']} verification episodes; sim seeds {s['seeds'][0]}-{s['seeds'][1]}, "
             f"torch threads {torch.get_num_threads()}")  # fmt: skip
    headers = ["robot", "wall time", "rollouts: success, taken over, operator steps", "gate", "verification (reference -> accepted)",
               "robot min", "result on sim seeds (95% CI)", "vs the start"]  # fmt: skip
    return format_table(headers, [row], title=title)


def main(argv: list[str] | None = None) -> None:
    from workflow.offline import OfflineConfig

    p = argparse.ArgumentParser(prog="python -m bench.robot_round", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", type=Path, required=True, help="imitation run directory or policy checkpoint the round starts from")
    p.add_argument("--data", type=Path, required=True, help="its demonstrations (episode store)")
    p.add_argument("--task", required=True, help="simulated task the result is evaluated on (and the round's task)")
    p.add_argument("--robot", required=True, help="robot spec the round's episodes run on: sim:lift, ur5e:standin:lift, franka:HOST...")
    p.add_argument("--out", type=Path, required=True, help="output directory (the round's run in OUT/round; a rerun resumes it)")
    p.add_argument("--episodes", type=int, default=200, help="deterministic sim evaluation episodes per policy")
    p.add_argument("--first-seed", type=int, default=2000, help="first sim seed of the evaluation")
    p.add_argument("--against", type=Path, default=None, help="another run's offline.paired.json to pair this run's result with")
    p.add_argument("--rollouts", type=int, default=30, help="rollouts of the reference added to the data before the critics")
    p.add_argument("--critic-steps", type=int, default=2000)
    p.add_argument("--ppo-updates", type=int, default=150)
    p.add_argument("--gate-every", type=int, default=50, help="PPO updates between AM-Q gate checks")
    p.add_argument("--ppo-batch", type=int, default=128, help="dataset states per PPO update")
    p.add_argument("--chains-per-state", type=int, default=4)
    p.add_argument("--rollout-std", type=float, default=0.1, help="std floor of the rollouts' stochastic chain")
    p.add_argument("--ope-horizon", type=int, default=5, help="AM-Q horizon in chunks")
    p.add_argument("--verify-episodes", type=int, default=OfflineConfig.verify_episodes, help="verification episodes per policy and look")
    p.add_argument("--verify-max-episodes", type=int, default=OfflineConfig.verify_max_episodes, help="most verification episodes per policy")
    p.add_argument("--verify-max-p", type=float, default=OfflineConfig.verify_max_p, help="one-sided sign-test p an accepted policy must reach at a look")
    p.add_argument("--dynamics-epochs", type=int, default=50, help="latent dynamics ensemble epochs (the pipeline's 50)")
    p.add_argument("--takeover-rate", type=float, default=0.2, help="share of drifting episodes the scripted operator takes over")
    p.add_argument("--drift-after", type=int, default=75, help="ticks without success after which an episode is drifting")
    p.add_argument("--takeover-steps", type=int, default=20, help="ticks the operator drives before handing back")
    p.add_argument("--operator-reward", choices=("auto", "task", "label"), default="auto", help="what scores the episodes")
    p.add_argument("--hz", type=float, default=0.0, help="control rate on the robot (0: unthrottled)")
    p.add_argument("--max-steps", type=int, default=None, help="ticks per episode on the robot (default: the task's limit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args(argv)
    if a.episodes < 1:
        p.error(f"--episodes must be >= 1, got {a.episodes}")
    if a.against is not None and not a.against.is_file():
        p.error(f"--against {a.against}: no such file; give another run's OUT/offline.paired.json")
    seeds = range(a.first_seed, a.first_seed + a.episodes)
    try:
        config = round_config(a)
        check_seeds_apart(config, seeds)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(a.threads)
    from workflow.offline import train_offline
    from workflow.pipeline import StageResult

    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    a.out.mkdir(parents=True, exist_ok=True)
    summary_path = a.out / "robot_round.json"
    finished_before = (Path(config.out) / "round-0" / "report.json").is_file()
    started = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # the round's own lines; stdout is the table's
        report = train_offline(config, show_progress=True)
    round_minutes = (time.perf_counter() - started) / 60
    if finished_before and summary_path.is_file():  # read back: the time the round took when it ran
        round_minutes = json.loads(summary_path.read_text()).get("round_minutes", round_minutes)
    known: dict = {}
    start, result = (paired_episodes(a.out, a.task, StageResult(stage, str(policy), 0.0, 0.0, 0, 0.0), seeds, known=known, device=a.device,
                                     show_progress=True, log=log) for stage, policy in (("start", a.policy), ("offline", report.policy)))  # fmt: skip
    summary = summarize(a, config, round_minutes, start, result)
    text = table(summary)
    if a.against is not None:
        other = StageEpisodes.read(a.against)
        line = paired_line(other, result)
        summary["against"] = {"path": str(a.against), "policy": other.policy, "success": sum(other.successes) / len(other.successes), "line": line}
        text += f"\n{summary['robot']} against {a.against} ({summary['against']['success']:.1%}) on the same seeds: {line} (two-sided sign test)"
    summary["table"] = text
    summary_path.write_text(json.dumps(summary, indent=2))
    print(text, flush=True)


if __name__ == "__main__":
    main()
