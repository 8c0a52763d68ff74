"""Denoisers: ``(noisy actions (B, T, Da), timesteps (B,), cond (B, Dc)) -> prediction (B, T, Da)``.

- :class:`MlpResNetDenoiser` for single actions (or short flattened chunks): the
  noisy action, timestep embedding and conditioning are concatenated and run
  through pre-LayerNorm residual MLP blocks (IDQL's LN-ResNet).
- :class:`ConditionalUnet1D` for action chunks: a 1-D conv U-Net over the chunk's
  time axis, every residual block FiLM-modulated by (timestep embedding, cond),
  GroupNorm throughout (diffusion_policy's design). Written by hand because
  diffusers' ``UNet1DModel`` has no conditioning input.

The prediction is the noise (epsilon) or the clean sample, as the policy's
``prediction_type`` says; the denoiser does not care.

``fold_timestep(t)`` turns either into the same function of ``(x, cond)`` at one
fixed timestep, with no timestep input: the embedding of ``t`` becomes a constant
and is added into the biases it fed. The one-step consistency head is such a
network; it skips the embedding MLP and the wider FiLM inputs on every call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class DenoiserConfig:
    """Architecture of the denoiser."""

    kind: Literal["mlp", "unet"] = "unet"
    """``mlp``: residual MLP (single actions); ``unet``: FiLM 1-D conv U-Net (chunks)."""
    timestep_embed_dim: int = 64
    """Width of the sinusoidal timestep embedding (and of the MLP after it)."""
    mlp_hidden_dim: int = 256
    """Width of the residual stream of the MLP denoiser."""
    mlp_num_blocks: int = 3
    """Residual blocks of the MLP denoiser."""
    mlp_dropout: float = 0.0
    """Dropout inside MLP blocks (keep 0 for RL: log-probs must be reproducible)."""
    unet_down_dims: tuple[int, ...] = (64, 128, 256)
    """Channels per U-Net level; the chunk is halved between levels, so horizon must be a multiple of 2**(levels-1)."""
    unet_kernel_size: int = 5
    """Temporal kernel of the U-Net convolutions (odd)."""
    unet_groups: int = 8
    """GroupNorm groups in the U-Net; must divide every entry of ``unet_down_dims``."""

    def __post_init__(self) -> None:
        if self.kind not in DENOISERS:
            raise ValueError(f"denoiser kind must be one of {sorted(DENOISERS)}, got {self.kind!r}")
        if self.timestep_embed_dim < 4 or self.timestep_embed_dim % 2:
            raise ValueError(f"timestep_embed_dim must be even and >= 4, got {self.timestep_embed_dim}")
        if self.mlp_hidden_dim <= 0 or self.mlp_num_blocks < 0 or not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError(
                f"bad MLP denoiser settings: hidden {self.mlp_hidden_dim}, blocks {self.mlp_num_blocks}, "
                f"dropout {self.mlp_dropout}"
            )
        if not self.unet_down_dims or any(d % self.unet_groups for d in self.unet_down_dims):
            raise ValueError(
                f"unet_groups={self.unet_groups} must divide every unet_down_dims entry, got {self.unet_down_dims}"
            )
        if self.unet_kernel_size % 2 == 0:
            raise ValueError(f"unet_kernel_size must be odd to keep the chunk length, got {self.unet_kernel_size}")


class SinusoidalEmbedding(nn.Module):
    """Integer timesteps ``(B,)`` -> ``(B, dim)`` sin/cos features (transformer positional encoding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / (half - 1))
        args = t.float()[:, None] * freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


def timestep_embedding(dim: int) -> nn.Module:
    """Sinusoidal features followed by a small MLP: ``(B,) -> (B, dim)``."""
    return nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))


class _MlpResBlock(nn.Module):
    """``h + W2 mish(W1 LN(dropout(h)))`` with a 4x expansion."""

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim)
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class MlpResNetDenoiser(nn.Module):
    """Residual MLP on the flattened ``(T * Da)`` action with timestep and cond concatenated at the input.

    ``timestep_input=False``: no timestep embedding; ``forward`` ignores ``timesteps`` (see :meth:`fold_timestep`).
    """

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, config: DenoiserConfig, timestep_input: bool = True) -> None:
        super().__init__()
        self._args = (action_dim, horizon, cond_dim, config)
        flat, hidden, dt = horizon * action_dim, config.mlp_hidden_dim, config.timestep_embed_dim if timestep_input else 0
        self.time_embed = timestep_embedding(dt) if timestep_input else None
        self.input = nn.Linear(flat + dt + cond_dim, hidden)
        self.blocks = nn.Sequential(*[_MlpResBlock(hidden, config.mlp_dropout) for _ in range(config.mlp_num_blocks)])
        self.output = nn.Sequential(nn.LayerNorm(hidden), nn.Mish(), nn.Linear(hidden, flat))

    def forward(self, x: Tensor, timesteps: Tensor | None, cond: Tensor) -> Tensor:
        b, t, da = x.shape  # (B, T, Da)
        parts = [x.flatten(1), cond] if self.time_embed is None else [x.flatten(1), self.time_embed(timesteps), cond]
        h = self.input(torch.cat(parts, dim=-1))  # (B, hidden)
        return self.output(self.blocks(h)).view(b, t, da)

    @torch.no_grad()
    def fold_timestep(self, timestep: int) -> "MlpResNetDenoiser":
        """A copy computing ``self(x, timestep, cond)`` with no timestep input: the embedding's
        share of the input layer, ``W_t emb(t)``, joins its bias."""
        folded, state, emb = _fold_start(self, timestep)
        flat, dt, w = self._args[0] * self._args[1], len(emb), self.input.weight
        state["input.weight"] = torch.cat([w[:, :flat], w[:, flat + dt :]], dim=1)
        state["input.bias"] = self.input.bias + w[:, flat : flat + dt] @ emb
        folded.load_state_dict(state)
        return folded


def _fold_start(denoiser: nn.Module, timestep: int) -> tuple[nn.Module, dict[str, Tensor], Tensor]:
    """For ``fold_timestep``: the no-timestep copy to fill, the weights it keeps as they are, and ``emb(t)`` (Dt,)."""
    if denoiser.time_embed is None:
        raise ValueError("this denoiser has no timestep input to fold")
    weight = next(denoiser.parameters())
    folded = type(denoiser)(*denoiser._args, timestep_input=False).to(weight)
    state = {k: v for k, v in denoiser.state_dict().items() if not k.startswith("time_embed.")}
    return folded, state, denoiser.time_embed(torch.tensor([timestep], device=weight.device))[0]


class _Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length preserving."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int) -> None:
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish())


class _FilmResBlock1d(nn.Module):
    """Two conv blocks; the first one's output is scaled and shifted per channel by the conditioning (FiLM)."""

    def __init__(self, cin: int, cout: int, film_dim: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.block1 = _Conv1dBlock(cin, cout, kernel, groups)
        self.block2 = _Conv1dBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(film_dim, 2 * cout))
        self.skip: nn.Module = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, film: Tensor) -> Tensor:
        h = self.block1(x)  # (B, C, T)
        scale, shift = self.film(film).unsqueeze(-1).chunk(2, dim=1)  # (B, C, 1) each
        return self.block2(h * (1 + scale) + shift) + self.skip(x)


class ConditionalUnet1D(nn.Module):
    """1-D U-Net over the chunk's time axis with FiLM conditioning on ``(timestep embedding, cond)``.

    Level i works at length ``T / 2**i`` with ``unet_down_dims[i]`` channels; skips join
    the decoder after upsampling to the same length.
    """

    def __init__(self, action_dim: int, horizon: int, cond_dim: int, config: DenoiserConfig, timestep_input: bool = True) -> None:
        super().__init__()
        self._args = (action_dim, horizon, cond_dim, config)
        dims, k, g = config.unet_down_dims, config.unet_kernel_size, config.unet_groups
        if horizon % 2 ** (len(dims) - 1):
            raise ValueError(
                f"ConditionalUnet1D with {len(dims)} levels needs horizon divisible by {2 ** (len(dims) - 1)}, "
                f"got {horizon}; use fewer unet_down_dims, another horizon, or the mlp denoiser"
            )
        film = (config.timestep_embed_dim if timestep_input else 0) + cond_dim
        self.time_embed = timestep_embedding(config.timestep_embed_dim) if timestep_input else None

        def res_pair(cin: int, cout: int) -> nn.ModuleList:
            return nn.ModuleList([_FilmResBlock1d(cin, cout, film, k, g), _FilmResBlock1d(cout, cout, film, k, g)])

        self.down = nn.ModuleList(res_pair(cin, cout) for cin, cout in zip((action_dim, *dims[:-1]), dims))
        self.downsample = nn.ModuleList([nn.Conv1d(d, d, 3, stride=2, padding=1) for d in dims[:-1]])
        self.mid = nn.ModuleList([_FilmResBlock1d(dims[-1], dims[-1], film, k, g) for _ in range(2)])
        self.upsample = nn.ModuleList([nn.ConvTranspose1d(d, d, 4, stride=2, padding=1) for d in dims[1:]])
        self.up = nn.ModuleList(res_pair(dims[i + 1] + dims[i], dims[i]) for i in range(len(dims) - 1))
        self.final = nn.Sequential(_Conv1dBlock(dims[0], dims[0], k, g), nn.Conv1d(dims[0], action_dim, 1))

    def forward(self, x: Tensor, timesteps: Tensor | None, cond: Tensor) -> Tensor:
        film = cond if self.time_embed is None else torch.cat([self.time_embed(timesteps), cond], dim=-1)  # (B, [Dt +] Dc)
        h = x.transpose(1, 2)  # (B, Da, T)
        skips = []
        for level, (res1, res2) in enumerate(self.down):
            h = res2(res1(h, film), film)
            if level < len(self.downsample):
                skips.append(h)
                h = self.downsample[level](h)
        for res in self.mid:
            h = res(h, film)
        for level in reversed(range(len(self.up))):
            h = torch.cat([self.upsample[level](h), skips[level]], dim=1)
            res1, res2 = self.up[level]
            h = res2(res1(h, film), film)
        return self.final(h).transpose(1, 2)  # (B, T, Da)

    @torch.no_grad()
    def fold_timestep(self, timestep: int) -> "ConditionalUnet1D":
        """A copy computing ``self(x, timestep, cond)`` with no timestep input. Every FiLM layer maps
        ``mish([emb(t), cond])``; its weights on ``mish(emb(t))``, a constant here, join its bias."""
        folded, state, emb = _fold_start(self, timestep)
        dt, emb = len(emb), F.mish(emb)
        for name in [k for k in state if k.endswith("film.1.weight")]:
            w, bias = state[name], name.removesuffix("weight") + "bias"
            state[bias] = state[bias] + w[:, :dt] @ emb
            state[name] = w[:, dt:]
        folded.load_state_dict(state)
        return folded


DENOISERS: dict[str, type[nn.Module]] = {"mlp": MlpResNetDenoiser, "unet": ConditionalUnet1D}


def build_denoiser(config: DenoiserConfig, action_dim: int, horizon: int, cond_dim: int, *, timestep_input: bool = True) -> nn.Module:
    """The denoiser ``config.kind`` names, sized for ``(B, horizon, action_dim)`` actions and ``(B, cond_dim)`` cond
    (``timestep_input=False``: the fixed-timestep form :meth:`fold_timestep` fills)."""
    return DENOISERS[config.kind](action_dim, horizon, cond_dim, config, timestep_input)
