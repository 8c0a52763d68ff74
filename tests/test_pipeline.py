"""The recipe end to end on the fast push task from biased demonstrations (the ci budget: imitation short of
convergence, which leaves the offline round a gain to find, and a token online stage; slow: about 20 minutes on
one core), and an offline round from its imitation policy pushed into overfitting, for the diagnostics (about 3
minutes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from workflow.paired import sign_test_p
from workflow.pipeline import PipelineConfig, run_pipeline

PIPELINE = PipelineConfig(task="push", budget="ci", demo_style="biased", seed=0)

# Each RL stage hands on a changed policy only when its paired wins on its own rollout seeds
# are beyond noise: the offline round's accepted and retrained policies against what they
# replace, online RL's snapshots against its start (on selection seeds apart from the
# evaluation's). A stage that changes nothing scores exactly what its input scored on the
# evaluation seeds; whether a change pays off there is the benchmark's question (bench.recipe,
# 200+ paired episodes), not a 30-episode test's.


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """The recipe on push from biased demonstrations, with the slow suite's budget (imitation short of
    convergence, a token online stage), run once for the tests of this module: (run directory, results, log lines)."""
    lines: list[str] = []
    out = tmp_path_factory.mktemp("pipeline") / "run"
    results = run_pipeline(replace(PIPELINE, out=str(out)), show_progress=False, log=lines.append)
    return out, results, lines


@pytest.mark.slow
def test_the_pipeline_on_push_from_biased_demonstrations_gains_in_its_offline_round(quick_run):
    run, results, lines = quick_run
    lines = list(lines)
    by_stage = {r.stage: r for r in results}
    assert list(by_stage) == ["imitation", "offline", "online", "one-step"]
    assert all(0.0 <= r.success <= 1.0 and r.cpu_minutes > 0 for r in results)
    imitation, offline, online = by_stage["imitation"], by_stage["offline"], by_stage["online"]
    assert imitation.success >= 0.4, "the state policy should push the block home from 100 biased demonstrations (63-72% measured)"
    # the learning claim: gated PPO on critics fitted to the stochastic chain's rollouts finds what the biased operator
    # missed, and the deterministic policy wins on the verification seeds beyond noise (71.5% -> 90.5% over 200 paired
    # episodes at update 100, docs/RESULTS.md session 15)
    round0 = json.loads((run / "offline" / "round-0" / "report.json").read_text())
    assert round0["accepted"] and not round0["refused"], round0
    wins, losses = round0["accepted_wins_losses"]
    assert wins > losses and sign_test_p(wins, losses, "greater") <= 0.25, round0
    assert round0["rollout_success"] > round0["reference_success"] and Path(round0["policy"]).resolve() != Path(imitation.policy).resolve()
    assert round0["verify_episodes"] in (100, 200, 300, 400) and round0["rollouts_success"] is not None  # both policies, in looks of 50
    assert offline.decision.startswith("AM-Q gate accepted") and ": kept" in offline.decision and online.decision.startswith("kept ")
    if online.decision.startswith("kept start"):
        assert online.success == offline.success, online.decision
    assert online.one_step_ms is not None and online.one_step_ms < online.ddim_ms, "the one-step head must be faster"
    table = lines[-1]
    for column in ("stage", "success", "95% CI", "won/lost", "steps to success", "episodes used", "CPU min", "kept", "one action chunk at batch 1: DDIM"):
        assert column in table
    assert "vs imitation" in table.splitlines()[4] and len(offline.successes) == len(imitation.successes) == PIPELINE.spend.eval_episodes
    gates = [json.loads(line) for line in (run / "offline" / "gate.jsonl").read_text().splitlines()]
    assert gates and all({"j_reference", "j_candidate", "accepted"} <= set(g) for g in gates)
    # a rerun resumes: every stage is read back, nothing retrains
    again = run_pipeline(replace(PIPELINE, out=str(run)), show_progress=False, log=lines.append)
    assert [r.success for r in again] == [r.success for r in results]
    assert sum("done before" in line for line in lines) == 3


@pytest.mark.slow
def test_diagnose_keeps_a_ppo_candidate_from_before_it_left_the_demonstrations_and_it_beats_the_last_in_sim(quick_run, tmp_path):
    """Offline PPO run too long at too large a step on 100 demonstrations, with no rollouts to check it: the gate accepts
    candidates whose AM-Q gain comes from leaving the data. The diagnostics see it offline (the KL staying too large, or
    ppo/demo_action_error rising) and keep the last accepted candidate before the turn; in sim it beats the last one the
    round accepted. Measured at actor lr 1e-4: from the biased demonstrations' imitation policy "diverging" (KL 0.22),
    update 25 kept, 66% against update 150's 0% of 50 episodes from this seed; from clean ones (session 14) "overfitting",
    the start kept, 67% against update 125's 22% of 100."""
    from policies.critics import CriticConfig
    from workflow.diagnostics.curves import load_stages
    from workflow.diagnostics.rules import diagnose_stage
    from workflow.evaluate import evaluate_policy
    from workflow.offline import OfflineConfig, train_offline
    from workflow.ope import GateConfig

    run, _, _ = quick_run
    out = tmp_path / "offline"
    cfg = OfflineConfig(policy=str(run / "imitation"), data=str(run / "demos.zarr"), out=str(out), task="push", rounds=1, critic=CriticConfig.for_horizon(4),
                        critic_steps=1000, ppo_updates=150, ppo_batch=64, gate_every=25, actor_lr=1e-4, log_prob_reduction="mean",
                        gate=GateConfig(horizon=5, delta_relative=0.0), rollout_episodes=0, retrain_steps=0, verify_rollouts=False)  # fmt: skip
    train_offline(cfg, show_progress=False)
    (ppo,) = [s for s in load_stages(out) if s.kind == "ppo"]
    verdict = diagnose_stage(ppo)
    accepted = [int(g["update"]) for g in ppo.gate if g["accepted"]]
    assert verdict.regime in ("overfitting", "diverging"), (verdict.regime, verdict.reasons)
    assert verdict.checkpoint_step < accepted[-1] and verdict.checkpoint == str(ppo.checkpoints[verdict.checkpoint_step])
    success = {}
    for step in (verdict.checkpoint_step, accepted[-1]):
        success[step] = evaluate_policy(ppo.checkpoints[step], "push", episodes=50, seed=100_000, show_progress=False).success_rate
    print(f"sim success over 50 episodes, chosen vs last accepted: {success}")
    assert success[verdict.checkpoint_step] > success[accepted[-1]], success


def test_the_demonstration_settings_override_the_budget_and_head_the_table(tmp_path):
    from robot.store import ZarrEpisodeStore
    from workflow.pipeline import BUDGETS, pipeline_table, record_demos

    config = PipelineConfig(task="push", out=str(tmp_path), budget="full", demos=2, demo_noise=0.3)
    assert config.spend.demos == 2 and config.spend.demo_noise == 0.3 and config.spend.imitation_steps == BUDGETS["full"].imitation_steps
    record_demos(config, tmp_path / "demos.zarr")
    store = ZarrEpisodeStore.open(tmp_path / "demos.zarr")
    assert store.num_episodes == 2
    assert all(meta.extra["noise"] == 0.3 for meta in store.metas)
    assert pipeline_table([], config).startswith("pipeline: task push, budget full, 2 demonstrations at noise 0.3, 200 evaluation episodes per stage (sampler ddpm-mean),")
    assert "at noise" not in pipeline_table([], PipelineConfig(out=str(tmp_path)))
    with pytest.raises(ValueError, match="demos must be >= 1"):
        PipelineConfig(out=str(tmp_path), demos=0)
    longer = PipelineConfig(task="push", out=str(tmp_path), budget="full", online_iterations=120)
    assert longer.spend.online_iterations == 120 and BUDGETS["full"].online_iterations == 40
    assert pipeline_table([], longer).startswith("pipeline: task push, budget full with 120 online iterations, 200 demonstrations")
    with pytest.raises(ValueError, match="online_iterations and offline_rounds must be >= 1"):
        PipelineConfig(out=str(tmp_path), online_iterations=0)
    with pytest.raises(ValueError, match="online_iterations and offline_rounds must be >= 1"):
        PipelineConfig(out=str(tmp_path), offline_rounds=0)
    flywheel = PipelineConfig(task="push", out=str(tmp_path), budget="full", offline_rounds=2, online_iterations=160)
    assert flywheel.spend.offline_rounds == 2 and BUDGETS["full"].offline_rounds == 1
    assert flywheel.budget_label == "full with 2 offline rounds and 160 online iterations"


def _stage_config(tmp_path, monkeypatch, trainer: str, done: tuple[str, ...], config: PipelineConfig):
    """The config ``run_pipeline`` hands ``pipeline.<trainer>``, the stages in ``done`` read back from results written
    here and the demonstrations' recording skipped; the trainer stops the run as it is called."""
    import workflow.pipeline as pipeline
    from robot.config import to_dict
    from workflow.stage_report import StageResult

    for name in done:
        result = StageResult(name, str(tmp_path / name / "policy"), 0.5, 0.0, 4, 0.1, successes=[True, False, True, False], lengths=[9, 20, 9, 20])
        (tmp_path / f"{name}.result.json").write_text(json.dumps(to_dict(result)))
    seen = []

    class Stop(Exception):
        pass

    def stage(config, show_progress):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(pipeline, trainer, stage)
    monkeypatch.setattr(pipeline, "record_demos", lambda config, path: None)
    with pytest.raises(Stop):
        run_pipeline(config, show_progress=False, log=lambda _: None)
    (handed,) = seen
    return handed


def test_the_offline_rounds_setting_reaches_the_offline_stage(tmp_path, monkeypatch):
    """``--offline-rounds`` replaces the budget's rounds in the offline stage's config."""
    from workflow.pipeline import BUDGETS

    config = _stage_config(tmp_path, monkeypatch, "train_offline", ("imitation",), PipelineConfig(task="push", out=str(tmp_path), budget="smoke", offline_rounds=3))
    assert config.rounds == 3 != BUDGETS["smoke"].offline_rounds


def test_screening_online_snapshots_reaches_the_online_stage_with_episodes_enough_to_tell_them_apart(tmp_path, monkeypatch):
    """``--online-select-every N``: every N-th snapshot is screened on 200 selection episodes and the best confirmed on
    200 fresh ones; without it the budget's last-snapshot selection stands."""
    from workflow.pipeline import BUDGETS, SNAPSHOT_SCREEN

    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    long = PipelineConfig(task="push", out=str(tmp_path / "a"), budget="smoke", online_iterations=120, online_select_every=10)
    config = _stage_config(tmp_path / "a", monkeypatch, "train_online", ("imitation", "offline"), long)
    assert (config.challengers, config.select_every, config.iterations) == ("snapshots", 10, 120)
    assert config.select_episodes == config.confirm_episodes == SNAPSHOT_SCREEN == 200
    assert long.budget_label == "smoke with 120 online iterations and online snapshots screened every 10 iterations"
    config = _stage_config(tmp_path / "b", monkeypatch, "train_online", ("imitation", "offline"), PipelineConfig(task="push", out=str(tmp_path / "b"), budget="smoke"))
    assert (config.challengers, config.select_episodes) == ("last", BUDGETS["smoke"].select_episodes)
    with pytest.raises(ValueError, match="online_select_every must be >= 1"):
        PipelineConfig(out=str(tmp_path), online_select_every=0)


def test_the_demonstration_style_reaches_the_recorder_and_heads_the_table(tmp_path):
    from robot.store import ZarrEpisodeStore
    from workflow.pipeline import pipeline_table, record_demos

    config = PipelineConfig(task="push", out=str(tmp_path), budget="smoke", demos=3, demo_style="hesitant")
    record_demos(config, tmp_path / "demos.zarr")
    metas = ZarrEpisodeStore.open(tmp_path / "demos.zarr").metas
    assert len(metas) == 3 and all(m.extra["style"] == "hesitant" and "noise" not in m.extra for m in metas)
    assert pipeline_table([], config).startswith("pipeline: task push, budget smoke, 3 demonstrations (hesitant operator), ")
    with_noise = PipelineConfig(out=str(tmp_path), demo_noise=0.1, demo_style="mixed")
    assert "demonstrations at noise 0.1 (mixed operator)," in pipeline_table([], with_noise)
    assert "operator" not in pipeline_table([], PipelineConfig(out=str(tmp_path)))
    with pytest.raises(ValueError, match="unknown expert style 'lazy'; choose one of iid, hesitant, biased, mixed"):
        PipelineConfig(out=str(tmp_path), demo_style="lazy")


def test_a_rerun_with_other_settings_is_refused_and_keeps_the_directory(tmp_path):
    """Finished stages are read back on a rerun, so a rerun under other settings would mislabel them."""
    (tmp_path / "pipeline.json").write_text(json.dumps({"task": "push", "budget": "quick", "seed": 0}))  # written before --sampler existed
    with pytest.raises(ValueError, match=r"sampler ddim \(now ddpm-mean\).*another --out"):
        run_pipeline(PipelineConfig(out=str(tmp_path), sampler="ddpm-mean"), show_progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match=r"demos None \(now 5\)"):
        run_pipeline(PipelineConfig(out=str(tmp_path), demos=5), show_progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match=r"demo_style iid \(now biased\)"):  # a file from before --demo-style reads as iid
        run_pipeline(PipelineConfig(out=str(tmp_path), sampler="ddim", demo_style="biased"), show_progress=False, log=lambda _: None)
    assert json.loads((tmp_path / "pipeline.json").read_text()) == {"task": "push", "budget": "quick", "seed": 0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.json"]


def test_a_rerun_with_more_online_iterations_goes_on_from_the_last_and_hands_on_what_one_longer_run_would(tmp_path):
    """The main job's 40 online iterations went on to 120 by hand-editing pipeline.json (session 36): a rerun with a larger
    ``--online-iterations`` now keeps imitation and offline, runs only the new iterations, selects again and evaluates
    the head again; a rerun with fewer is refused, and changes nothing."""
    import shutil

    from safetensors.torch import load_file

    from workflow.online_resume import finished_iterations
    from workflow.run import state_dir

    short = PipelineConfig(task="push", budget="smoke", out=str(tmp_path / "a"), online_iterations=1, lanes=1)
    run_pipeline(short, show_progress=False, log=lambda _: None)
    kept = {name: (tmp_path / "a" / f"{name}.result.json").read_text() for name in ("imitation", "offline")}
    shutil.copytree(tmp_path / "a", tmp_path / "b", ignore=lambda d, names: [n for n in names if n in ("online", "pipeline.json") or n.startswith(("online.", "one-step."))])
    lines: list[str] = []
    longer = run_pipeline(replace(short, online_iterations=2), show_progress=False, log=lines.append)
    assert "[online] runs again: more online iterations than the finished run's" in lines and "[one-step] runs again: more online iterations than the finished run's" in lines
    assert {name: (tmp_path / "a" / f"{name}.result.json").read_text() for name in kept} == kept  # read back, not rerun
    assert finished_iterations(state_dir(tmp_path / "a" / "online")) == 2
    steps = [json.loads(line)["step"] for line in (tmp_path / "a" / "online" / "metrics.jsonl").read_text().splitlines() if "charts/success" in line]
    assert steps == [0, 1]  # iteration 0 was not run twice
    fresh = run_pipeline(replace(short, out=str(tmp_path / "b"), online_iterations=2), show_progress=False, log=lambda _: None)  # the same earlier stages
    assert [(r.stage, r.success, r.episodes) for r in longer] == [(r.stage, r.success, r.episodes) for r in fresh]
    ours, theirs = (load_file(str(tmp_path / run / "online" / "policy" / "tensors.safetensors")) for run in ("a", "b"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    before = sorted(p.name for p in (tmp_path / "a").iterdir())
    with pytest.raises(ValueError, match=r"was run with 2 online iterations, more than --online-iterations 1: rerun with at least 2"):
        run_pipeline(short, show_progress=False, log=lambda _: None)
    assert json.loads((tmp_path / "a" / "pipeline.json").read_text())["online_iterations"] == 2
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == before and (tmp_path / "a" / "online.result.json").is_file()


def test_the_table_pairs_each_stage_with_the_one_it_started_from():
    from workflow.stage_report import StageResult, pipeline_table

    imitation = [True, True, False, False, False, True]
    offline = [True, True, True, True, False, True]  # 2 seeds only it solved, none lost
    head = [True, False, True, True, False, True]  # 1 lost against its teacher
    results = [
        StageResult("imitation", "a", 0.5, 0.0, 6, 1.0, successes=imitation, lengths=[40, 50, 80, 80, 80, 60]),
        StageResult("offline", "b", 5 / 6, 0.0, 6, 2.0, decision="kept", successes=offline, lengths=[30, 40, 50, 60, 80, 20]),
        StageResult("online", "b", 5 / 6, 0.0, 6, 3.0, 30.0, 2.0, successes=offline, lengths=[30, 40, 50, 60, 80, 20]),
        StageResult("one-step", "b", 4 / 6, 0.0, 0, 0.1, 30.0, 2.0, successes=head, lengths=[30, 80, 50, 60, 80, 20]),
    ]
    lines = pipeline_table(results, PipelineConfig()).splitlines()
    rows = {line.split()[0]: line for line in lines[3:7]}
    assert "2/0 vs imitation  0.5" in rows["offline"] and "40.0" in rows["offline"]  # mean steps of its 5 successes
    assert "0/0 vs offline" in rows["online"] and "0/1 vs online" in rows["one-step"]
    assert "the one-step head 2.00 ms (15x faster)" in lines[-1]
    # results written before the pipeline kept its episodes' outcomes: no interval, no pairing, no traceback
    old = [StageResult("imitation", "a", 0.5, 0.0, 6, 1.0), StageResult("offline", "b", 0.6, 0.0, 6, 2.0)]
    assert pipeline_table(old, PipelineConfig()).splitlines()[4].split()[:3] == ["offline", "60.0%", "-"]


def test_a_budget_whose_rl_stages_freeze_different_denoising_steps_is_refused():
    from dataclasses import replace

    from workflow.pipeline import BUDGETS

    with pytest.raises(ValueError, match="offline_ft_steps and online_ft_steps must be equal"):
        replace(BUDGETS["quick"], offline_ft_steps=3)
    assert replace(BUDGETS["quick"], online_ft_steps=None).offline_ft_steps == 5  # online RL then keeps the offline policy's frozen steps


def test_the_budgets_head_settings_reach_the_online_stage(tmp_path, monkeypatch):
    """The online stage distils the head with the budget's steps, on-policy rounds and target reuse (stages already done
    are read from their results, so only the online stage's config is built)."""
    import workflow.pipeline as pipeline

    monkeypatch.setitem(pipeline.BUDGETS, "smoke", replace(pipeline.BUDGETS["smoke"], distill_reuse=3, distill_final_steps=7, distill_onpolicy_rounds=2,
                                                           distill_pool=None))
    config = _stage_config(tmp_path, monkeypatch, "train_online", ("imitation", "offline"),
                           PipelineConfig(task="push", out=str(tmp_path), budget="smoke", online_iterations=5))
    assert (config.distill_reuse, config.distill_final_steps, config.distill_onpolicy_rounds, config.distill_pool) == (3, 7, 2, None)
    assert config.iterations == 5 != pipeline.BUDGETS["smoke"].online_iterations  # --online-iterations over the budget's
    assert config.policy == str(tmp_path / "offline" / "policy")
    assert pipeline.BUDGETS["full"].distill_reuse == 16 and pipeline.BUDGETS["full"].offline_ft_steps == 5


def test_the_head_settings_replace_the_budgets_and_name_themselves_in_the_table(tmp_path, monkeypatch):
    """``--head-steps`` and ``--head-onpolicy-rounds`` replace the budget's distillation of the handed-on policy's head;
    the table's title says so."""
    longer = PipelineConfig(task="push", out=str(tmp_path), budget="smoke", head_steps=2500, head_onpolicy_rounds=4)
    config = _stage_config(tmp_path, monkeypatch, "train_online", ("imitation", "offline"), longer)
    assert (config.distill_final_steps, config.distill_onpolicy_rounds, config.distill_reuse) == (2500, 4, 4)  # reuse stays the budget's
    assert longer.budget_label == "smoke with a head of 2500 distillation steps in 4 on-policy rounds"
    assert PipelineConfig(out=str(tmp_path), head_onpolicy_rounds=2).budget_label == "quick with a head of 900 distillation steps in 2 on-policy rounds"
    assert PipelineConfig(out=str(tmp_path)).budget_label == "quick"
    with pytest.raises(ValueError, match="head_steps must be >= 1 and head_onpolicy_rounds >= 0, got 0 and None"):
        PipelineConfig(out=str(tmp_path), head_steps=0)
