"""Named policy presets, so command lines and the pipeline say "chunk" or "single" instead of forty fields."""

from __future__ import annotations

from policies.denoisers import DenoiserConfig
from policies.diffusion import DiffusionPolicyConfig

PRESETS = ("chunk", "single")


def policy_preset(
    name: str, *, horizon: int = 8, n_action_steps: int = 4, n_obs_steps: int = 2, deterministic_sampler: str = "ddpm-mean"
) -> DiffusionPolicyConfig:
    """``chunk``: FiLM 1-D U-Net over ``horizon`` actions (sigma_max 0.1); ``single``: MLP-ResNet, one action (sigma_max 0.8).
    ``deterministic_sampler`` (``ddim`` or ``ddpm-mean``) is what the policy deploys with and distils into its one-step head."""
    if name == "chunk":
        return DiffusionPolicyConfig.action_chunk(
            n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps, denoiser=DenoiserConfig(kind="unet", unet_down_dims=(64, 128)),
            deterministic_sampler=deterministic_sampler,
        )
    if name == "single":
        return DiffusionPolicyConfig.single_action(n_obs_steps=n_obs_steps, deterministic_sampler=deterministic_sampler)
    raise ValueError(f"unknown policy preset {name!r}; choose one of {', '.join(PRESETS)}")
