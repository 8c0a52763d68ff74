"""EMA decay warmup and averaging; the one-step consistency head's warm start and distillation."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from policies.consistency import COPY, MLP, ConsistencyHead, StudentConfig
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
    head = ConsistencyHead.from_policy(teacher, COPY)
    assert head.timestep == int(teacher.timesteps()[0]) == 90
    assert head.denoiser is not teacher.denoiser
    with torch.no_grad():
        cond = teacher.encode(batch(STATE_ONLY, 16))
    noise = torch.randn(16, 4, 2)
    with torch.no_grad():  # warm start: the teacher's denoiser at t_K, folded
        torch.testing.assert_close(head(noise, cond), noise - teacher.denoiser(noise, torch.full((16,), 90), cond), atol=1e-5, rtol=1e-5)
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
    with torch.no_grad():
        assert not torch.allclose(head(noise, cond), noise - teacher.denoiser(noise, torch.full((16,), 90), cond), atol=1e-3)


@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_folding_the_timestep_keeps_the_function_and_drops_its_input(kind: str) -> None:
    torch.manual_seed(0)
    denoiser = tiny_policy(STATE_ONLY, kind, 4).denoiser.eval()
    folded = denoiser.fold_timestep(90)
    x, cond = torch.randn(8, 4, 2), torch.randn(8, denoiser._args[2])
    with torch.no_grad():
        torch.testing.assert_close(folded(x, None, cond), denoiser(x, torch.full((8,), 90), cond), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(folded(x, None, cond), denoiser(x, torch.full((8,), 10), cond), atol=1e-3)
    assert folded.time_embed is None and not any(k.startswith("time_embed.") for k in folded.state_dict())
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in denoiser.parameters())
    with pytest.raises(ValueError, match="no timestep input"):
        folded.fold_timestep(90)


def test_a_head_saved_before_the_fold_loads_as_the_same_function(tmp_path) -> None:
    """Heads in older checkpoints are a full copy of the denoiser; loading folds them."""
    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "unet", 4).eval()
    old_layout = {f"denoiser.{k}": v.clone() + 0.01 for k, v in teacher.denoiser.state_dict().items()}
    head = ConsistencyHead.from_policy(teacher, COPY)
    head.load_state_dict(head.upgrade_state(old_layout))
    unfolded = tiny_policy(STATE_ONLY, "unet", 4).denoiser.eval()
    unfolded.load_state_dict({k.removeprefix("denoiser."): v for k, v in old_layout.items()})
    noise, cond = torch.randn(4, 4, 2), torch.randn(4, teacher.cond_dim)
    with torch.no_grad():
        torch.testing.assert_close(head(noise, cond), noise - unfolded(noise, torch.full((4,), head.timestep), cond), atol=1e-5, rtol=1e-5)
    assert head.upgrade_state(head.state_dict()).keys() == head.state_dict().keys()  # the current layout passes through


def test_a_head_is_the_teachers_chain_from_zero_and_a_head_saved_before_keeps_drawing_noise() -> None:
    """New heads start from x_K = 0: one action per state, distilled onto the teacher's chain from 0. Heads saved
    before ``noise_scale`` were distilled from fresh noise and keep drawing it."""
    from workflow.distill import distill_targets

    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "mlp", 4).eval()
    head = ConsistencyHead.from_policy(teacher)
    with torch.no_grad():
        cond = teacher.encode(batch(STATE_ONLY, 8))
    first, second = (head.sample(cond, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    noise, _, target = distill_targets(teacher, head, cond, torch.Generator().manual_seed(2))
    assert not noise.any()
    torch.testing.assert_close(target, teacher.sample(cond, deterministic=True, noise=torch.zeros_like(noise)), rtol=0, atol=0)

    saved = {k: v for k, v in ConsistencyHead.from_policy(teacher, COPY).state_dict().items() if k != "noise_scale"}  # a checkpoint from before
    old = ConsistencyHead(teacher.config, teacher.action_dim, teacher.cond_dim, COPY)
    old.load_state_dict(old.upgrade_state(saved))
    assert float(old.noise_scale) == 1.0
    first, second = (old.sample(cond, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    assert not torch.allclose(first, second)
    noise, _, _ = distill_targets(teacher, old, cond, torch.Generator().manual_seed(2))
    assert noise.abs().mean() > 0.5


def test_an_mlp_head_is_saved_with_its_student_and_heads_saved_before_load_as_copies(tmp_path) -> None:
    """The head's network is a choice saved with it; a checkpoint from before the choice holds a copy of the denoiser."""
    from robot.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from robot.normalize import Normalizer
    from workflow.policy import KIND, build_from_checkpoint, save_policy

    torch.manual_seed(0)
    teacher = tiny_policy(STATE_ONLY, "unet", 4).eval()
    assert ConsistencyHead.from_policy(teacher).student == COPY == StudentConfig()
    head = ConsistencyHead.from_policy(teacher, MLP)
    assert head.student == StudentConfig(kind="mlp", hidden_dim=128, num_blocks=3) and head.student.lr == 1e-3
    assert type(head.denoiser).__name__ == "MlpResNetDenoiser" and head.denoiser.time_embed is None
    cond = torch.randn(5, teacher.cond_dim)
    normalizer = Normalizer({})
    save_policy(tmp_path / "new", teacher, normalizer, consistency=head)
    loaded = build_from_checkpoint(load_checkpoint(tmp_path / "new", kind=KIND))[1]
    assert loaded.student == head.student
    torch.testing.assert_close(loaded.sample(cond), head.sample(cond), rtol=0, atol=0)

    copy = ConsistencyHead.from_policy(teacher, COPY)  # a head saved before students were a choice: no config entry
    save_policy(tmp_path / "old", teacher, normalizer, consistency=copy)
    ckpt = load_checkpoint(tmp_path / "old", kind=KIND)
    del ckpt.config["consistency"]
    save_checkpoint(tmp_path / "old", ckpt)
    loaded = build_from_checkpoint(load_checkpoint(tmp_path / "old", kind=KIND))[1]
    assert loaded.student == COPY
    torch.testing.assert_close(loaded.sample(cond), copy.sample(cond), rtol=0, atol=0)

    ckpt.config["consistency"] = {"kind": "transformer"}
    save_checkpoint(tmp_path / "bad", ckpt)
    with pytest.raises(CheckpointError, match="consistency head's config"):
        build_from_checkpoint(load_checkpoint(tmp_path / "bad", kind=KIND))
    with pytest.raises(ValueError, match="kind must be"):
        StudentConfig(kind="transformer")


def test_ema_of_a_policy_is_a_usable_policy() -> None:
    torch.manual_seed(0)
    policy = tiny_policy(STATE_ONLY, "mlp", 4)
    ema = EmaModel(policy)
    ema.update(policy)
    cond = ema.averaged.encode(batch(STATE_ONLY, 3))
    assert ema.averaged.sample(cond, deterministic=True).shape == (3, 4, 2)
    assert set(ema.averaged.state_dict()) == set(policy.state_dict())
