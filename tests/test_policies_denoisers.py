"""Denoisers: shapes, use of timestep and conditioning, configuration errors."""

from __future__ import annotations


import pytest
import torch

from policies.denoisers import ConditionalUnet1D, DenoiserConfig, build_denoiser

MLP = DenoiserConfig(kind="mlp", timestep_embed_dim=16, mlp_hidden_dim=32, mlp_num_blocks=2)
UNET = DenoiserConfig(
    kind="unet", timestep_embed_dim=16, unet_down_dims=(16, 32, 32), unet_kernel_size=3, unet_groups=4
)




@pytest.mark.parametrize("config,horizon", [(MLP, 1), (MLP, 4), (UNET, 8), (UNET, 16)])
def test_denoiser_maps_noisy_actions_to_same_shape_and_uses_t_and_cond(config: DenoiserConfig, horizon: int) -> None:
    torch.manual_seed(0)
    net = build_denoiser(config, action_dim=3, horizon=horizon, cond_dim=10)
    x, cond = torch.randn(4, horizon, 3), torch.randn(4, 10)
    t = torch.tensor([0, 10, 50, 99])
    out = net(x, t, cond)
    assert out.shape == (4, horizon, 3)
    assert not torch.allclose(out, net(x, t.flip(0), cond))
    assert not torch.allclose(out, net(x, t, cond + 1.0))
    out.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_unet_rejects_horizon_it_cannot_halve() -> None:
    with pytest.raises(ValueError, match="horizon divisible by 4"):
        ConditionalUnet1D(action_dim=3, horizon=6, cond_dim=4, config=UNET)


def test_denoiser_config_validates() -> None:
    with pytest.raises(ValueError, match="kind"):
        DenoiserConfig(kind="transformer")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unet_groups"):
        DenoiserConfig(unet_down_dims=(12, 24), unet_groups=8)
    with pytest.raises(ValueError, match="odd"):
        DenoiserConfig(unet_kernel_size=4)
