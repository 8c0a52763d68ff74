"""Latent dynamics ensemble: learns a nonlinear toy system, ranks elites, stops early, predicts reproducibly."""

from __future__ import annotations

import pytest
import torch

from policies.dynamics import DynamicsConfig, DynamicsEnsemble, DynamicsFitReport
from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy

FEATURES, ACTIONS = 4, 2
SMALL = DynamicsConfig(hidden_dims=(64, 64), batch_size=128, lr=3e-3, max_epochs=30, patience=5, holdout_fraction=0.2)


def toy_transitions(n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """s' = s + 0.1 tanh(W a + s), r = -|s|^2 with a fixed W."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(FEATURES, ACTIONS, generator=torch.Generator().manual_seed(123))
    s = torch.randn(n, FEATURES, generator=g)
    a = torch.rand(n, ACTIONS, generator=g) * 2 - 1
    s_next = s + 0.1 * torch.tanh(a @ w.T + s)
    return s, a, s_next, -s.square().sum(dim=1)


@pytest.fixture(scope="module")
def fitted() -> tuple[DynamicsEnsemble, DynamicsFitReport]:
    torch.manual_seed(0)
    model = DynamicsEnsemble(FEATURES, ACTIONS, SMALL)
    return model, model.fit(*toy_transitions(2000, seed=0), seed=0)


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="elites"):
        DynamicsConfig(members=3, elites=5)
    with pytest.raises(ValueError, match="holdout_fraction"):
        DynamicsConfig(holdout_fraction=0.0)


def test_beats_a_constant_predictor_on_held_out_data(fitted: tuple[DynamicsEnsemble, DynamicsFitReport]) -> None:
    model, report = fitted
    s, a, s_next, r = toy_transitions(1000, seed=1)  # fresh data from the same system
    pred_s, pred_r = model.predict(s, a, deterministic=True)
    assert pred_s.shape == s.shape and pred_r.shape == r.shape
    train_s, _, train_next, train_r = toy_transitions(2000, seed=0)
    const_delta = (train_next - train_s).mean(dim=0)  # the best constant guess of s' - s
    const_delta_mse = (s + const_delta - s_next).square().mean()
    const_reward_mse = (train_r.mean() - r).square().mean()
    sampled_s, sampled_r = model.predict(s, a, generator=torch.Generator().manual_seed(0))
    for ps, pr in ((pred_s, pred_r), (sampled_s, sampled_r)):  # elite mean and TS-1 samples alike
        delta_ratio = (ps - s_next).square().mean() / const_delta_mse
        reward_ratio = (pr - r).square().mean() / const_reward_mse
        assert delta_ratio < 0.1 and reward_ratio < 0.1, (delta_ratio, reward_ratio)
    assert max(report.holdout_mse) < 0.2 and report.num_holdout == 400 and report.num_train == 1600


def test_members_disagree_more_off_the_data_than_on_it(fitted: tuple[DynamicsEnsemble, DynamicsFitReport]) -> None:
    model, _ = fitted
    s, a, _, _ = toy_transitions(500, seed=1)
    on_data = model.disagreement(s, a)
    off_data = model.disagreement(s, a + 20.0)  # actions far outside anything the members were fitted on
    assert on_data.shape == (500,) and bool((on_data >= 0).all())
    assert off_data.mean() > 5 * on_data.mean(), (float(on_data.mean()), float(off_data.mean()))


def test_elites_are_the_best_held_out_members(fitted: tuple[DynamicsEnsemble, DynamicsFitReport]) -> None:
    model, report = fitted
    ranking = sorted(range(SMALL.members), key=lambda m: report.holdout_mse[m])
    assert report.elites == ranking[: SMALL.elites] == model.elite_indices.tolist()
    # the restored weights are the ones that scored report.holdout_mse on the same held-out split
    s, a, s_next, r = toy_transitions(2000, seed=0)
    hold = torch.randperm(2000, generator=torch.Generator().manual_seed(0))[: report.num_holdout]
    torch.testing.assert_close(model.member_mse(s[hold], a[hold], s_next[hold], r[hold]).tolist(), report.holdout_mse)
    # predictions never consult a non-elite member, however wrong it is
    outcast = ranking[-1]
    before = model.predict(s[:64], a[:64], generator=torch.Generator().manual_seed(5))
    before_mean = model.predict(s[:64], a[:64], deterministic=True)
    saved = model.head.bias.detach().clone()
    with torch.no_grad():
        model.head.bias[outcast] += 1e3
    try:
        after = model.predict(s[:64], a[:64], generator=torch.Generator().manual_seed(5))
        for x, y in zip(before + before_mean, after + model.predict(s[:64], a[:64], deterministic=True)):
            torch.testing.assert_close(x, y)
    finally:
        with torch.no_grad():
            model.head.bias.copy_(saved)


def test_early_stopping_stops_before_max_epochs() -> None:
    torch.manual_seed(0)
    config = DynamicsConfig(members=3, elites=2, hidden_dims=(32,), batch_size=64, lr=3e-3, max_epochs=500,
                            patience=2, min_improvement=0.05)
    model = DynamicsEnsemble(FEATURES, ACTIONS, config)
    epochs: list[int] = []
    report = model.fit(*toy_transitions(300, seed=2), on_epoch=lambda e, m: epochs.append(e))
    assert report.stopped_early and report.epochs < 500 and epochs == list(range(1, report.epochs + 1))


def test_predict_is_reproducible(fitted: tuple[DynamicsEnsemble, DynamicsFitReport]) -> None:
    model, _ = fitted
    s, a, _, _ = toy_transitions(32, seed=3)
    first, second = model.predict(s, a, deterministic=True), model.predict(s, a, deterministic=True)
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    draws = [model.predict(s, a, generator=torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])
    with pytest.raises(ValueError, match=r"flattening to \(B, 2\)"):
        model.predict(s, torch.zeros(32, 3))
    chunked = DynamicsEnsemble(FEATURES, 3 * ACTIONS, DynamicsConfig(members=2, elites=1, hidden_dims=(8,)))
    assert chunked.predict(s, torch.zeros(32, 3, ACTIONS))[0].shape == (32, FEATURES)


def test_rolls_a_diffusion_policy_through_the_model() -> None:
    """What the AM-Q gate does: encode once, then alternate policy samples and model steps in feature space."""
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", horizon=4, action_dim=2)
    model = DynamicsEnsemble(policy.cond_dim, policy.config.horizon * policy.action_dim,
                             DynamicsConfig(members=3, elites=2, hidden_dims=(16,)))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        s = policy.encode(batch(STATE_ONLY, 5))  # (5, Dc)
        for _ in range(3):
            s, r = model.predict(s, policy.sample(s, deterministic=False, generator=generator), generator=generator)
    assert s.shape == (5, policy.cond_dim) and r.shape == (5,) and torch.isfinite(s).all()
