"""The critic's choice of pace (workflow.pace): candidates, the critics' pick, the regression, the offline round's step."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from policies.diffusion import DiffusionPolicy
from robot.normalize import Normalizer
from robot.types import ACTION, Feature
from tests.test_imitation import TINY, record_demos
from workflow.imitation import ImitationConfig, train_imitation
from workflow.pace import PaceConfig, chunk_speed, pace_applies, pace_targets, policy_speed, regress_onto, scaled_chunks

ARM = Feature((4,), names=("dx", "dy", "dz", "gripper"), low=(-0.02, -0.02, -0.02, -1.0), high=(0.02, 0.02, 0.02, 1.0))


def _policy(action: Feature = ARM, seed: int = 0, **config) -> tuple[DiffusionPolicy, Normalizer]:
    """An untrained policy for ``action`` whose normaliser maps the action's bounds to [-1, 1]."""
    torch.manual_seed(seed)
    policy = DiffusionPolicy(replace(TINY, **config), {"observation.state": Feature((3,))}, {ACTION: action}).eval().requires_grad_(False)
    bounds = np.stack([action.low, action.high]).astype(np.float32)
    return policy, Normalizer.fit({ACTION: bounds}, {ACTION: "limits"})


class _Critics:
    """A stand-in for IqlCritics whose min Q is ``score(cond, executed chunk)``."""

    def __init__(self, score):
        self.q = SimpleNamespace(min_q=score)


def _speeds(norm: Normalizer, executed: torch.Tensor) -> torch.Tensor:
    """(N,) mean translation speed of flattened executed chunks ``(N, Ta * 4)``, raw units."""
    return norm.unnormalize(ACTION, executed.view(len(executed), -1, 4))[..., :3].norm(dim=-1).mean(-1)


def test_a_chunk_is_sped_up_in_its_motion_entries_only_and_within_the_bounds():
    policy, norm = _policy()
    raw = torch.tensor([[[0.004, -0.015, 0.0, 0.5]] * TINY.horizon])  # (1, H, 4)
    out = norm.unnormalize(ACTION, scaled_chunks(policy, norm.normalize(ACTION, raw), (0.5, 2.0), norm))  # (1, 3, H, 4)
    assert torch.allclose(out[0, 0], raw[0], atol=1e-6)  # the policy's own chunk comes first, untouched
    assert torch.allclose(out[0, 1, 0], torch.tensor([0.002, -0.0075, 0.0, 0.5]), atol=1e-6)
    assert torch.allclose(out[0, 2, 0], torch.tensor([0.008, -0.02, 0.0, 0.5]), atol=1e-6)  # dy clipped at the bound, the gripper unscaled


def test_the_critics_pick_the_speed_they_rank_first_and_the_policy_s_own_chunk_on_a_tie():
    # an untrained "sample" policy's chunks sit well inside [-1, 1]; nothing clips them, so every speed is exact
    policy, norm = _policy(Feature((4,), names=("dx", "dy", "dz", "gripper"), low=(-1.0,) * 4, high=(1.0,) * 4), prediction_type="sample", clip_sample=False)
    norm = Normalizer.fit({ACTION: np.array([[-0.1] * 4, [0.1] * 4], dtype=np.float32)}, {ACTION: "limits"})  # raw = normalised / 10
    cond = torch.randn(64, policy.cond_dim)
    own = pace_targets(policy, _Critics(lambda c, a: torch.zeros(len(a))), cond, norm, PaceConfig(scales=(1.5, 3.0)), seed=3)
    assert torch.all(own.scale == 1) and torch.all(own.q_gain == 0) and own.summary()["pace/changed"] == 0
    own_speed = _speeds(norm, policy.executed(own.actions).flatten(1))

    def closest_to(k):  # a critic that wants each state's executed motion at k times the policy's own speed there
        return lambda c, a: -(_speeds(norm, a) - k * own_speed.repeat_interleave(len(a) // len(own_speed))).abs()

    chosen = pace_targets(policy, _Critics(closest_to(1.5)), cond, norm, PaceConfig(scales=(1.5, 3.0)), seed=3)
    assert torch.all(chosen.scale == 1.5) and torch.all(chosen.q_gain > 0) and chosen.summary()["pace/changed"] == 1
    slower = pace_targets(policy, _Critics(closest_to(0.5)), cond, norm, PaceConfig(scales=(0.5, 2.0)), seed=3)
    assert torch.all(slower.scale == 0.5) and slower.summary()["pace/mean_scale"] == 0.5
    assert torch.allclose(norm.unnormalize(ACTION, slower.actions)[..., :3], 0.5 * norm.unnormalize(ACTION, own.actions)[..., :3], atol=1e-6)


def test_the_regression_hands_the_chosen_pace_to_the_policy():
    policy, norm = _policy(seed=1)  # epsilon prediction, as the presets train
    cond = torch.randn(256, policy.cond_dim)
    gen = torch.Generator().manual_seed(0)
    slow = (0.3 * torch.rand(256, 1, 4, generator=gen) * torch.sign(torch.randn(256, 1, 4, generator=gen))).expand(-1, TINY.horizon, -1).contiguous()
    fitted, _ = regress_onto(policy, cond, slow, PaceConfig(scales=(2.0,), steps=400, batch=128, lr=1e-3), seed=0)  # a policy with a pace to change
    faster = pace_targets(fitted, _Critics(lambda c, a: _speeds(norm, a)), cond, norm, PaceConfig(scales=(2.0,)), seed=0)
    before, target = policy_speed(fitted, cond, norm, seed=0), chunk_speed(fitted, faster.actions, norm)
    regressed, loss = regress_onto(fitted, cond, faster.actions, PaceConfig(scales=(2.0,), steps=400, batch=128, lr=1e-3), seed=0)
    after = policy_speed(regressed, cond, norm, seed=0)
    assert faster.summary()["pace/changed"] > 0.9 and target > 1.5 * before
    assert after - before > 0.6 * (target - before), (before, after, target)
    assert policy_speed(fitted, cond, norm, seed=0) == before  # the policy itself is untouched: the gate compares the two
    assert not any(p.requires_grad for p in regressed.parameters()) and np.isfinite(loss)


def test_pace_is_refused_for_actions_that_are_not_end_effector_deltas():
    policy, norm = _policy(Feature((3,), names=("a0", "a1", "a2"), low=(-1.0,) * 3, high=(1.0,) * 3))
    with pytest.raises(ValueError, match="end-effector delta actions; this policy's actions are direct"):
        pace_targets(policy, _Critics(lambda c, a: torch.zeros(len(a))), torch.randn(4, policy.cond_dim), norm, PaceConfig(scales=(2.0,)), seed=0)
    with pytest.raises(ValueError, match="distinct, positive and not 1"):
        PaceConfig(scales=(1.0, 2.0))


def test_an_offline_round_with_pace_gates_the_regressed_policy_and_logs_what_it_chose(tmp_path):
    from typer.testing import CliRunner

    from robot.cli import app

    demos = record_demos(tmp_path / "push.zarr", 4)
    train_imitation(ImitationConfig(data=str(demos), out=str(tmp_path / "il"), policy=TINY, steps=5, batch_size=8, eval_every=5, checkpoint_every=5), show_progress=False)
    out = tmp_path / "off"
    args = ["train", "offline", "--policy", str(tmp_path / "il"), "--data", str(demos), "--out", str(out), "--rounds", "1", "--critic-steps", "10",
            "--ppo-updates", "2", "--gate-every", "2", "--rollout-episodes", "0", "--pace-scales", "1.5,2", "--pace-steps", "3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "round 0: pace: the critics chose another speed at" in result.output
    gates = [json.loads(line) for line in (out / "gate.jsonl").read_text().splitlines()]
    assert [g["source"] for g in gates] == ["ppo", "pace"] and gates[1]["update"] == 3
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = next(r for r in rows if "pace/mean_scale" in r)
    assert 1 <= logged["pace/mean_scale"] <= 2 and {"pace/speed_before", "pace/speed_after", "pace/speed_target"} <= set(logged)
    assert json.loads((out / "config.json").read_text())["pace"]["scales"] == [1.5, 2.0]


def test_pace_on_a_policy_whose_actions_are_not_deltas_is_refused_before_the_run_exists(tmp_path):
    from workflow.offline import OfflineConfig, train_offline
    from workflow.policy import save_policy

    policy, norm = _policy(Feature((3,), names=("a0", "a1", "a2"), low=(-1.0,) * 3, high=(1.0,) * 3))
    save_policy(tmp_path / "direct", policy, norm, extra={"task": "push"})
    config = OfflineConfig(policy=str(tmp_path / "direct"), data=str(tmp_path / "none.zarr"), out=str(tmp_path / "off"), task="push",
                           pace=PaceConfig(scales=(2.0,)))  # fmt: skip
    with pytest.raises(ValueError, match="this policy's actions are direct"):
        train_offline(config, show_progress=False)
    assert not (tmp_path / "off").exists()
    assert not pace_applies(policy.action_features[ACTION]) and pace_applies(ARM)  # the pipeline's optional step skips such a policy
