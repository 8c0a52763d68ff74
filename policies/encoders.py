"""Observation encoders: camera images, point clouds and proprioception -> one conditioning vector.

:class:`ObservationEncoder` takes a batch keyed like the store (``observation.state``,
``observation.images.<cam>``, ``observation.pointcloud``), each value with a time
axis ``(B, To, ...)``, encodes every frame with the encoder built for its key and
concatenates the frame features into one vector ``(B, To * D)``.

- :class:`RgbEncoder`: small ResNet with GroupNorm (no BatchNorm: batch statistics
  break with small RL batches and EMA), random crop in train mode, centre crop in
  eval mode, spatial-softmax keypoints.
- :class:`PointCloudEncoder`: DP3 style per-point MLP with LayerNorm, max-pool over points.
- :class:`StateEncoder`: MLP on a proprio vector.

Inputs are expected normalised by the caller, except images: uint8 frames are
scaled to [0, 1] here, float frames are taken as already in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robot.types import POINTCLOUD, Feature, is_image_key


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of every per-key encoder."""

    state_hidden_dim: int = 128
    """Hidden width of the MLP on each vector key (``observation.state``)."""
    state_feature_dim: int = 64
    """Features per frame from each vector key."""
    image_channels: tuple[int, ...] = (32, 64, 128)
    """Channels of the RGB encoder's residual stages; every stage after the first halves the resolution."""
    image_keypoints: int = 32
    """Spatial-softmax keypoints on the last feature map (each gives an (x, y) pair)."""
    image_feature_dim: int = 64
    """Features per frame from each camera."""
    image_crop_ratio: float = 0.9
    """Crop side over image side (84 -> 76): random crop in train mode, centre crop in eval; 1.0 disables."""
    group_norm_groups: int = 8
    """Groups of every GroupNorm in the RGB encoder; must divide every entry of ``image_channels``."""
    point_channels: tuple[int, ...] = (64, 128, 256)
    """Widths of the per-point MLP layers of the point-cloud encoder."""
    point_feature_dim: int = 64
    """Features per frame from the point cloud."""

    def __post_init__(self) -> None:
        if not self.image_channels or not self.point_channels:
            raise ValueError("image_channels and point_channels need at least one entry each")
        bad = [c for c in self.image_channels if c % self.group_norm_groups]
        if bad:
            raise ValueError(
                f"group_norm_groups={self.group_norm_groups} does not divide image_channels {bad}; "
                "pick channels that are multiples of it"
            )
        if not 0.0 < self.image_crop_ratio <= 1.0:
            raise ValueError(f"image_crop_ratio must be in (0, 1], got {self.image_crop_ratio}")
        dims = (self.state_hidden_dim, self.state_feature_dim, self.image_keypoints, self.image_feature_dim,
                self.point_feature_dim, *self.image_channels, *self.point_channels)
        if min(dims) <= 0:
            raise ValueError(f"every width in EncoderConfig must be positive, got {self}")


class StateEncoder(nn.Module):
    """MLP on one proprio vector: ``(N, Ds) -> (N, state_feature_dim)``."""

    def __init__(self, dim: int, config: EncoderConfig) -> None:
        super().__init__()
        self.out_dim = config.state_feature_dim
        self.net = nn.Sequential(
            nn.Linear(dim, config.state_hidden_dim), nn.Mish(), nn.Linear(config.state_hidden_dim, self.out_dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.float())


class PointCloudEncoder(nn.Module):
    """DP3 encoder: per-point MLP (Linear, LayerNorm, ReLU), max over points, projection.

    ``(N, P, C) -> (N, point_feature_dim)``; invariant to the order of the P points.
    """

    def __init__(self, in_channels: int, config: EncoderConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in config.point_channels:
            layers += [nn.Linear(in_channels, width), nn.LayerNorm(width), nn.ReLU()]
            in_channels = width
        self.point_mlp = nn.Sequential(*layers)
        self.out_dim = config.point_feature_dim
        self.project = nn.Sequential(nn.Linear(in_channels, self.out_dim), nn.LayerNorm(self.out_dim))

    def forward(self, points: Tensor) -> Tensor:
        per_point = self.point_mlp(points.float())  # (N, P, C')
        return self.project(per_point.max(dim=1).values)


class _ResBlock2d(nn.Module):
    """Basic ResNet block with GroupNorm."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.skip: nn.Module = nn.Identity()
        if cin != cout or stride != 1:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(groups, cout))

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(h)) + self.skip(x))


class SpatialSoftmax(nn.Module):
    """Feature map -> expected (x, y) image coordinates of K learned keypoints: ``(N, C, h, w) -> (N, 2K)``."""

    def __init__(self, channels: int, keypoints: int) -> None:
        super().__init__()
        self.to_keypoints = nn.Conv2d(channels, keypoints, 1)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.to_keypoints(x)  # (N, K, h, w)
        h, w = logits.shape[-2:]
        attention = torch.softmax(logits.flatten(2), dim=-1)  # (N, K, h*w)
        ys, xs = torch.meshgrid(
            torch.linspace(-1, 1, h, device=x.device), torch.linspace(-1, 1, w, device=x.device), indexing="ij"
        )
        grid = torch.stack([xs.flatten(), ys.flatten()], dim=-1).to(attention.dtype)  # (h*w, 2)
        return (attention @ grid).flatten(1)


class RgbEncoder(nn.Module):
    """Small GroupNorm ResNet for one camera: ``(N, 3, H, W)`` or ``(N, H, W, 3)`` -> ``(N, image_feature_dim)``.

    ``image_shape`` is the stored frame shape ``(H, W, 3)`` (``Feature.shape``); frames may
    come channels-last as stored or channels-first, uint8 or float in [0, 1].
    """

    def __init__(self, image_shape: tuple[int, ...], config: EncoderConfig) -> None:
        super().__init__()
        if len(image_shape) != 3 or image_shape[2] != 3:
            raise ValueError(f"RgbEncoder expects frames of shape (H, W, 3), got {tuple(image_shape)}")
        h, w = int(image_shape[0]), int(image_shape[1])
        self.image_shape = (h, w, 3)
        self.crop = (max(1, round(h * config.image_crop_ratio)), max(1, round(w * config.image_crop_ratio)))
        groups, channels = config.group_norm_groups, config.image_channels
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.GroupNorm(groups, channels[0]), nn.ReLU()
        )
        blocks, cin = [], channels[0]
        for i, cout in enumerate(channels):
            blocks.append(_ResBlock2d(cin, cout, stride=1 if i == 0 else 2, groups=groups))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = SpatialSoftmax(cin, config.image_keypoints)
        self.out_dim = config.image_feature_dim
        self.project = nn.Sequential(nn.Linear(2 * config.image_keypoints, self.out_dim), nn.LayerNorm(self.out_dim))

    def to_float_chw(self, frames: Tensor) -> Tensor:
        """``(N, H, W, 3)`` or ``(N, 3, H, W)``, uint8 or float -> float ``(N, 3, H, W)`` in [-1, 1]."""
        h, w, _ = self.image_shape
        if tuple(frames.shape[1:]) == (h, w, 3):
            frames = frames.permute(0, 3, 1, 2)
        elif tuple(frames.shape[1:]) != (3, h, w):
            raise ValueError(
                f"camera frames must be (N, {h}, {w}, 3) or (N, 3, {h}, {w}), got {tuple(frames.shape)}"
            )
        frames = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
        return frames * 2.0 - 1.0

    def crop_frames(self, x: Tensor) -> Tensor:
        """Random crop per frame in train mode, centre crop in eval mode: ``(N, 3, H, W) -> (N, 3, h, w)``."""
        (ch, cw), (n, _, h, w) = self.crop, x.shape
        if (ch, cw) == (h, w):
            return x
        if not self.training:
            top, left = (h - ch) // 2, (w - cw) // 2
            return x[..., top : top + ch, left : left + cw]
        top = torch.randint(0, h - ch + 1, (n, 1, 1), device=x.device)
        left = torch.randint(0, w - cw + 1, (n, 1, 1), device=x.device)
        rows = top + torch.arange(ch, device=x.device).view(1, ch, 1)  # (N, ch, 1)
        cols = left + torch.arange(cw, device=x.device).view(1, 1, cw)  # (N, 1, cw)
        batch = torch.arange(n, device=x.device).view(n, 1, 1)
        return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (N, 3, ch, cw)

    def forward(self, frames: Tensor) -> Tensor:
        x = self.crop_frames(self.to_float_chw(frames))
        return self.project(self.pool(self.blocks(self.stem(x))))


def _module_name(key: str) -> str:
    """``observation.images.front`` -> ``observation__images__front`` (module names cannot hold dots)."""
    return key.replace(".", "__")


def build_key_encoder(key: str, feature: Feature, config: EncoderConfig) -> nn.Module:
    """The encoder for one observation key, chosen by key and shape."""
    if is_image_key(key):
        return RgbEncoder(feature.shape, config)
    if key == POINTCLOUD:
        if len(feature.shape) != 2:
            raise ValueError(f"{key} must be (N, C) points, got {feature.describe()}")
        return PointCloudEncoder(feature.shape[1], config)
    if len(feature.shape) == 1:
        return StateEncoder(feature.shape[0], config)
    raise ValueError(
        f"no encoder for {key} ({feature.describe()}): use observation.images.<cam> for (H, W, 3) frames, "
        f"{POINTCLOUD} for (N, 3) points, or a flat vector"
    )


class ObservationEncoder(nn.Module):
    """All ``observation.*`` keys of ``features``, ``To`` frames each -> conditioning vector ``(B, To * D)``.

    Keys are encoded in sorted order; keys of the batch that are not ``observation.*``
    features (``action``, ``reward``) are ignored.
    """

    def __init__(self, features: Mapping[str, Feature], n_obs_steps: int, config: EncoderConfig) -> None:
        super().__init__()
        self.keys = sorted(k for k in features if k.startswith("observation."))
        if not self.keys:
            raise ValueError(f"ObservationEncoder needs observation.* features, got {sorted(features)}")
        self.features = {k: features[k] for k in self.keys}
        self.n_obs_steps = n_obs_steps
        self.encoders = nn.ModuleDict({_module_name(k): build_key_encoder(k, features[k], config) for k in self.keys})
        self.frame_dim = sum(int(enc.out_dim) for enc in self.encoders.values())
        self.output_dim = n_obs_steps * self.frame_dim

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        parts = []
        for key in self.keys:
            if key not in obs:
                raise KeyError(f"observation batch lacks {key} ({self.features[key].describe()}); it has {sorted(obs)}")
            x = obs[key]  # (B, To, ...)
            shape = self.features[key].shape
            frame_ok = is_image_key(key) or tuple(x.shape[2:]) == tuple(shape)
            if x.ndim != 2 + len(shape) or x.shape[1] != self.n_obs_steps or not frame_ok:
                raise ValueError(
                    f"{key} must be (B, To={self.n_obs_steps}, {', '.join(map(str, shape))}) "
                    f"but has shape {tuple(x.shape)}"
                )
            b, to = x.shape[:2]
            parts.append(self.encoders[_module_name(key)](x.flatten(0, 1)).view(b, to, -1))
        return torch.cat(parts, dim=-1).flatten(1)  # (B, To * D)
