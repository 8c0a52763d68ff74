"""EMA decay warmup and averaging; the one-step consistency head's warm start and distillation."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from policies.consistency import ConsistencyHead
from policies.ema import EmaConfig, EmaModel
from tests.test_policies_diffusion import STATE_ONLY, batch, tiny_policy




def test_ema_decay_warms_up_and_is_capped() -> None:
    ema = EmaModel(nn.Linear(2, 2), EmaConfig(power=0.75, max_decay=0.999))
    decays = [ema.decay(n) for n in (0, 1, 10, 500, 10_000, 10**7)]
    assert decays[0] == 0.0
    assert decays == sorted(decays)
    assert decays[3] == pytest.approx(1 - 501**-0.75) and 0.98 < decays[3] < 0.995
    assert decays[-1] == 0.999
    late = EmaModel(nn.Linear(2, 2), EmaConfig(update_after_step=5))
    assert late.decay(5) == 0.0 and late.decay(6) > 0.0
    with pytest.raises(ValueError, match="max_decay"):
        EmaConfig(max_decay=1.0)


def test_ema_starts_as_copy_then_averages() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    ema = EmaModel(model)
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    assert ema.update(model) == 0.0  # first update copies
    torch.testing.assert_close(ema.averaged[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.fill_(3.0)
    decay = ema.update(model)
    torch.testing.assert_close(ema.averaged[0].weight, torch.full((3, 3), decay * 1.0 + (1 - decay) * 3.0))
    assert not any(p.requires_grad for p in ema.averaged.parameters())
    assert ema.num_updates == 2


def test_consistency_head_warm_starts_from_the_teacher_and_distils() -> None:
    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval()
    head = ConsistencyHead.from_policy(teacher)
    assert head.timestep == int(teacher.timesteps()[0]) == 90
    for (name, a), b in zip(head.denoiser.state_dict().items(), teacher.denoiser.state_dict().values()):
        assert torch.equal(a, b), name
    assert head.denoiser is not teacher.denoiser
    with torch.no_grad():
        cond = teacher.encode(batch(STATE_ONLY, 16))
    noise = torch.randn(16, 4, 2)
    target = teacher.sample(cond, deterministic=True, noise=noise)  # (B, T, Da) from the same noise
    assert head(noise, cond).shape == target.shape
    sampled = head.sample(cond, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (16, 4, 2) and sampled.abs().max() <= 1.0
    optimiser = torch.optim.Adam(head.parameters(), lr=3e-3)
    before = nn.functional.mse_loss(head(noise, cond), target).item()
    for _ in range(60):
        loss = nn.functional.mse_loss(head(noise, cond), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.2 * before
    teacher_params = dict(teacher.denoiser.named_parameters())
    assert any(not torch.equal(p, teacher_params[n]) for n, p in head.denoiser.named_parameters())


def test_ema_of_a_policy_is_a_usable_policy() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "mlp", 4)
    ema = EmaModel(policy)
    ema.update(policy)
    cond = ema.averaged.encode(batch(STATE_ONLY, 3))
    assert ema.averaged.sample(cond, deterministic=True).shape == (3, 4, 2)
    assert set(ema.averaged.state_dict()) == set(policy.state_dict())
