"""IQL critics: chunk targets at episode edges, values on a chain MDP, advantages on a bandit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies.critics import CriticBatch, CriticConfig, IqlCritics, TwinQ, chunk_returns, expectile_loss
from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy


def train(critics: IqlCritics, batch: CriticBatch | dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    optimizer = critics.make_optimizer()
    stats: dict[str, float] = {}
    for _ in range(steps):
        stats = critics.update(batch, optimizer)
    return stats


def test_config_validates_and_picks_expectile_by_horizon() -> None:
    assert CriticConfig.for_horizon(1).expectile == 0.7
    assert CriticConfig.for_horizon(16).expectile == 0.9
    assert CriticConfig.for_horizon(8, gamma=0.997).gamma == 0.997
    with pytest.raises(ValueError, match="expectile"):
        CriticConfig(expectile=1.0)
    with pytest.raises(ValueError, match="tau"):
        CriticConfig(tau=0.0)
    with pytest.raises(ValueError, match="hidden_dims"):
        CriticConfig(hidden_dims=())


def test_chunk_returns_at_episode_edges() -> None:
    # episode A: steps 0-2, terminates (done) at step 2; episode B: steps 3-6, time limit (no done)
    rewards = np.array([1, 2, 3, 10, 20, 30, 40], dtype=np.float32)
    dones = np.array([0, 0, 1, 0, 0, 0, 0], dtype=bool)
    out = chunk_returns(rewards, dones, np.array([3, 7]), horizon=2, gamma=0.5)
    np.testing.assert_allclose(out.rewards, [1 + 1, 2 + 1.5, 3, 10 + 10, 20 + 15, 30 + 20, 40])
    np.testing.assert_array_equal(out.steps, [2, 2, 1, 2, 2, 2, 1])
    np.testing.assert_allclose(out.discounts, [0.25, 0.25, 0.5, 0.25, 0.25, 0.25, 0.5])
    np.testing.assert_array_equal(out.terminals, [False, True, True, False, False, False, False])
    np.testing.assert_array_equal(out.next_indices, [2, 2, 2, 5, 6, 6, 6])  # clamped to each episode's last frame


def test_chunk_returns_stops_at_a_done_inside_the_chunk() -> None:
    out = chunk_returns(np.ones(5), np.array([0, 1, 0, 0, 0]), np.array([5]), horizon=4, gamma=0.9)
    assert out.steps[0] == 2 and out.terminals[0] and out.rewards[0] == pytest.approx(1.9)
    assert out.steps[2] == 3 and not out.terminals[2] and out.next_indices[2] == 4
    with pytest.raises(ValueError, match="episode_ends"):
        chunk_returns(np.ones(5), np.zeros(5), np.array([3]), horizon=2, gamma=0.9)


def test_expectile_loss_weights_underestimates_more() -> None:
    diff = torch.tensor([1.0, -1.0])
    assert expectile_loss(diff[:1], 0.7) == pytest.approx(0.7)
    assert expectile_loss(diff[1:], 0.7) == pytest.approx(0.3)


def test_twin_q_shapes_and_soft_update() -> None:
    critics = IqlCritics(feature_dim=6, action_dim=2, horizon=3, config=CriticConfig(hidden_dims=(16,), tau=0.25))
    s, a = torch.randn(4, 6), torch.randn(4, 3, 2)
    q1, q2 = critics.q(s, a)
    assert q1.shape == q2.shape == (4,) and torch.equal(critics.q.min_q(s, a.flatten(1)), torch.minimum(q1, q2))
    with pytest.raises(ValueError, match=r"flattening to \(B, 6\)"):
        critics.q(s, torch.randn(4, 5))
    assert not any(p.requires_grad for p in critics.target_q.parameters())
    assert {id(p) for p in critics.make_optimizer().param_groups[0]["params"]}.isdisjoint(
        id(p) for p in critics.target_q.parameters())
    before = [p.clone() for p in critics.target_q.parameters()]
    with torch.no_grad():
        for p in critics.q.parameters():
            p.add_(1.0)
    critics.soft_update()
    for old, new, online in zip(before, critics.target_q.parameters(), critics.q.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * online)
    assert TwinQ(3, 2)(torch.randn(5, 3), torch.randn(5, 2))[0].shape == (5,)


def test_critics_fit_chain_values_with_chunks() -> None:
    """5-state chain, always stepping right, reward 1 on leaving the last state: V(k) = gamma^(4 - k)."""
    torch.manual_seed(0)
    n_states, n_episodes, gamma, horizon = 5, 4, 0.9, 2
    states = np.tile(np.arange(n_states), n_episodes)  # (N,)
    rewards = (states == n_states - 1).astype(np.float32)
    ends = np.arange(1, n_episodes + 1) * n_states
    targets = chunk_returns(rewards, rewards > 0, ends, horizon, gamma)
    features = torch.eye(n_states)[states]
    batch = CriticBatch(
        features=features,
        actions=torch.ones(len(states), horizon, 1),
        rewards=torch.as_tensor(targets.rewards),
        discounts=torch.as_tensor(targets.discounts),
        terminals=torch.as_tensor(targets.terminals),
        next_features=features[targets.next_indices],
    )
    config = CriticConfig(hidden_dims=(64, 64), expectile=0.7, gamma=gamma, tau=0.05, lr=3e-3)
    critics = IqlCritics(n_states, action_dim=1, horizon=horizon, config=config)
    stats = train(critics, batch, steps=400)
    expected = gamma ** (n_states - 1 - torch.arange(n_states, dtype=torch.float32))
    torch.testing.assert_close(critics.value(torch.eye(n_states)), expected, atol=0.05, rtol=0)
    assert stats["losses/q_td"] < 1e-3 and set(stats) >= {"losses/v_expectile", "values/q_mean", "values/v_mean"}


def test_advantage_prefers_the_better_action_on_a_bandit() -> None:
    """One state, actions -1 / +1 with reward = action: Q(+1) = 1 > Q(-1) = -1; V = expectile of {-1, 1}."""
    torch.manual_seed(0)
    actions = torch.tensor([-1.0, 1.0]).repeat(32)[:, None]  # (64, 1)
    batch = dict(features=torch.ones(64, 1), actions=actions, rewards=actions[:, 0], discounts=torch.full((64,), 0.99),
                 terminals=torch.ones(64), next_features=torch.ones(64, 1))
    expectile = 0.7
    critics = IqlCritics(1, 1, config=CriticConfig(hidden_dims=(32, 32), expectile=expectile, tau=0.05, lr=3e-3))
    train(critics, batch, steps=300)
    s = torch.ones(2, 1)
    adv = critics.advantage(s, torch.tensor([[1.0], [-1.0]]))
    assert adv[0] > 0.3 and adv[1] < -0.3
    # expectile e of an even two-point {-1, 1}: e (1 - v) = (1 - e)(1 + v)  =>  v = 2e - 1
    assert critics.value(s)[0].item() == pytest.approx(2 * expectile - 1, abs=0.05)


def test_critics_take_diffusion_policy_features_and_chunks() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "unet", horizon=4, action_dim=2)
    cond = policy.encode(batch(STATE_ONLY, 3))  # (3, Dc), still attached to the encoder's graph
    actions = policy.sample(cond.detach(), deterministic=False)  # (3, 4, 2)
    config = CriticConfig.for_horizon(policy.config.horizon, hidden_dims=(16,))
    critics = IqlCritics(policy.cond_dim, policy.action_dim, policy.config.horizon, config)
    terms = critics.losses(dict(features=cond, actions=actions, rewards=torch.zeros(3), discounts=torch.full((3,), 0.9),
                                terminals=torch.zeros(3), next_features=cond))
    terms["losses/total"].backward()
    assert all(p.grad is None for p in policy.parameters())  # the encoder stays frozen
    assert critics.advantage(cond.detach(), actions).shape == (3,)
