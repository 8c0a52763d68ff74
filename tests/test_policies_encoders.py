"""Observation encoders: layouts, crops, point order, the per-key/time-axis contract."""

from __future__ import annotations


import pytest
import torch

from policies.encoders import EncoderConfig, ObservationEncoder, PointCloudEncoder, RgbEncoder
from robot.types import POINTCLOUD, STATE, Feature, image_key

TINY = EncoderConfig(
    state_hidden_dim=32, state_feature_dim=16, image_channels=(8, 16), image_keypoints=8, image_feature_dim=16,
    group_norm_groups=4, point_channels=(16, 32), point_feature_dim=16,
)




def test_rgb_encoder_takes_stored_uint8_hwc_and_float_chw_alike() -> None:
    torch.manual_seed(0)
    enc = RgbEncoder((24, 24, 3), TINY).eval()
    frames = torch.randint(0, 256, (5, 24, 24, 3), dtype=torch.uint8)  # (N, H, W, 3) as stored
    as_float_chw = frames.permute(0, 3, 1, 2).float() / 255.0
    out = enc(frames)
    assert out.shape == (5, TINY.image_feature_dim)
    torch.testing.assert_close(out, enc(as_float_chw))
    with pytest.raises(ValueError, match=r"\(N, 24, 24, 3\)"):
        enc(torch.zeros(5, 3, 20, 20))


def test_rgb_crop_is_random_window_in_train_and_centre_in_eval() -> None:
    torch.manual_seed(0)
    enc = RgbEncoder((84, 84, 3), EncoderConfig(image_crop_ratio=0.9))
    assert enc.crop == (76, 76)
    x = torch.randn(6, 3, 84, 84)
    crops = enc.train().crop_frames(x)
    assert crops.shape == (6, 3, 76, 76)
    offsets = set()
    for n in range(6):  # every crop is a real 76x76 window of its own frame
        hits = [(i, j) for i in range(9) for j in range(9) if torch.equal(crops[n], x[n, :, i : i + 76, j : j + 76])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 1
    torch.testing.assert_close(enc.eval().crop_frames(x), x[..., 4:80, 4:80])


def test_pointcloud_encoder_ignores_point_order() -> None:
    torch.manual_seed(0)
    enc = PointCloudEncoder(3, TINY)
    points = torch.randn(2, 64, 3)
    shuffled = points[:, torch.randperm(64)]
    torch.testing.assert_close(enc(points), enc(shuffled))
    assert enc(points).shape == (2, TINY.point_feature_dim)


def _features() -> dict[str, Feature]:
    return {
        STATE: Feature((5,)),
        image_key("front"): Feature((24, 24, 3), "uint8"),
        image_key("wrist"): Feature((24, 24, 3), "uint8"),
        POINTCLOUD: Feature((32, 3)),
        "action": Feature((2,)),
    }


def _batch(b: int, to: int) -> dict[str, torch.Tensor]:
    return {
        STATE: torch.randn(b, to, 5),
        image_key("front"): torch.randint(0, 256, (b, to, 24, 24, 3), dtype=torch.uint8),
        image_key("wrist"): torch.randint(0, 256, (b, to, 3, 24, 24), dtype=torch.uint8),
        POINTCLOUD: torch.randn(b, to, 32, 3),
        "action": torch.randn(b, 4, 2),  # ignored
    }


def test_observation_encoder_encodes_each_frame_and_concatenates() -> None:
    torch.manual_seed(0)
    enc = ObservationEncoder(_features(), n_obs_steps=2, config=TINY).eval()
    assert enc.keys == sorted([STATE, image_key("front"), image_key("wrist"), POINTCLOUD])
    assert enc.frame_dim == 4 * 16 and enc.output_dim == 2 * 64
    obs = _batch(3, 2)
    cond = enc(obs)
    assert cond.shape == (3, 128)
    obs[STATE] = obs[STATE].clone()
    obs[STATE][:, 1] += 1.0  # touch the last frame only: the first frame's features stay put
    changed = (enc(obs) - cond).abs().view(3, 2, 64).amax(dim=(0, 2))
    assert changed[0] == 0 and changed[1] > 0


def test_observation_encoder_names_missing_keys_and_bad_shapes() -> None:
    enc = ObservationEncoder(_features(), n_obs_steps=2, config=TINY)
    obs = _batch(2, 2)
    with pytest.raises(KeyError, match="observation.pointcloud"):
        enc({k: v for k, v in obs.items() if k != POINTCLOUD})
    with pytest.raises(ValueError, match=r"observation.state must be \(B, To=2, 5\)"):
        enc({**obs, STATE: torch.randn(2, 3, 5)})
    with pytest.raises(ValueError, match="no encoder for observation.depth"):
        ObservationEncoder({"observation.depth": Feature((8, 8, 4, 1))}, 1, TINY)
    with pytest.raises(ValueError, match="group_norm_groups"):
        EncoderConfig(image_channels=(12, 16), group_norm_groups=8)
