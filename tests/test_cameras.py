"""CameraRig on a tiny hand-written model: upright uint8 images, exact-size cropped point clouds, lazy GL."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import mujoco
import numpy as np
import pytest

from robot.types import POINTCLOUD, image_key
from sim.cameras import CameraConfig, CameraRig, PointCloudConfig, farthest_point_indices, sample_points

# A grey floor seen from straight above by "top" (image right = +x, image up = +y),
# a red box at +y (top of the picture) and a blue box at +x (right of the picture).
XML = """
<mujoco>
  <visual><headlight ambient="0.4 0.4 0.4" diffuse="0.4 0.4 0.4"/></visual>
  <worldbody>
    <geom type="plane" size="0.5 0.5 0.01" rgba="0.5 0.5 0.5 1"/>
    <camera name="top" pos="0 0 1" xyaxes="1 0 0 0 1 0" fovy="45"/>
    <camera name="side" pos="0 -1 0.3" xyaxes="1 0 0 0 0 1" fovy="45"/>
    <geom name="red" type="box" pos="0 0.2 0.05" size="0.05 0.05 0.05" rgba="1 0 0 1"/>
    <geom name="blue" type="box" pos="0.2 0 0.05" size="0.05 0.05 0.05" rgba="0 0 1 1"/>
    <body name="base" pos="0.2 0.1 0" euler="0 0 1.5707963"/>
  </worldbody>
</mujoco>
"""
CROP_LOW, CROP_HIGH = (-0.4, -0.4, 0.01), (0.4, 0.4, 0.2)


@pytest.fixture(scope="module")
def model_data() -> tuple[mujoco.MjModel, mujoco.MjData]:
    model = mujoco.MjModel.from_xml_string(XML)
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    return model, data


@pytest.fixture(scope="module")
def rig(model_data):
    model, data = model_data
    cloud = PointCloudConfig("top", num_points=200, crop_low=CROP_LOW, crop_high=CROP_HIGH)
    rig = CameraRig(model, data, ("top", "side"), 64, 80, cloud)
    yield rig
    rig.close()


def _colour_mask(image: np.ndarray, channel: int) -> np.ndarray:
    others = [c for c in range(3) if c != channel]
    return (image[..., channel] > 120) & (image[..., others].max(axis=-1) < 60)


def test_images_are_uint8_hwc_and_upright(rig: CameraRig) -> None:
    out = rig.render()
    top = out[image_key("top")]
    assert top.dtype == np.uint8 and top.shape == (64, 80, 3)
    assert out[image_key("side")].shape == (64, 80, 3)
    rows, _ = np.nonzero(_colour_mask(top, 0))  # red box at +y: upper half of the picture
    _, cols = np.nonzero(_colour_mask(top, 2))  # blue box at +x: right half
    assert len(rows) > 10 and rows.mean() < 32
    assert len(cols) > 10 and cols.mean() > 40


def test_pointcloud_has_exactly_n_points_inside_the_crop(rig: CameraRig) -> None:
    cloud = rig.render()[POINTCLOUD]
    assert cloud.dtype == np.float32 and cloud.shape == (200, 3)
    assert np.all(cloud >= np.array(CROP_LOW) - 1e-6) and np.all(cloud <= np.array(CROP_HIGH) + 1e-6)
    # The top camera sees the box tops (z = 0.1) around the two box centres, in world coordinates.
    assert np.median(cloud[:, 2]) == pytest.approx(0.1, abs=0.005)
    near_red = np.linalg.norm(cloud[:, :2] - [0.0, 0.2], axis=1) < 0.08
    near_blue = np.linalg.norm(cloud[:, :2] - [0.2, 0.0], axis=1) < 0.08
    assert near_red.any() and near_blue.any() and np.all(near_red | near_blue)


def test_pointcloud_in_a_body_frame(model_data) -> None:
    model, data = model_data
    # More points than pixels kept: every kept pixel appears, padded in pixel order, so the clouds align.
    world_cfg = PointCloudConfig("top", num_points=4000, crop_low=(-1, -1, 0.01), crop_high=(1, 1, 0.2))
    base_cfg = PointCloudConfig("top", num_points=4000, crop_low=(-1, -1, 0.01), crop_high=(1, 1, 0.2), frame="base")
    with CameraRig(model, data, (), 32, 32, world_cfg) as world_rig:
        world = world_rig.render()[POINTCLOUD]
    with CameraRig(model, data, (), 32, 32, base_cfg) as base_rig:
        base = base_rig.render()[POINTCLOUD]
    body = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "base")
    expected = (world - data.xpos[body]) @ data.xmat[body].reshape(3, 3)  # R^T (p - x), row-wise
    np.testing.assert_allclose(base, expected, atol=1e-5)


def test_empty_crop_gives_zeros(model_data) -> None:
    model, data = model_data
    empty = PointCloudConfig("side", num_points=32, crop_low=(2.0, 2.0, 2.0), crop_high=(3.0, 3.0, 3.0))
    with CameraRig(model, data, (), 32, 32, empty) as rig:
        cloud = rig.render()[POINTCLOUD]
    assert cloud.shape == (32, 3) and not cloud.any()


def test_features_describe_render_output(rig: CameraRig) -> None:
    out = rig.render()
    feats = rig.features()
    assert set(feats) == set(out)
    for key, feat in feats.items():
        assert out[key].shape == feat.shape and out[key].dtype == np.dtype(feat.dtype)


def test_no_gl_context_until_first_render(model_data) -> None:
    model, data = model_data
    rig = CameraRig(model, data, ("top",), 32, 32)
    assert not rig.has_context
    rig.render()
    assert rig.has_context
    rig.close()
    assert not rig.has_context


def test_errors_name_the_problem(model_data) -> None:
    model, data = model_data
    with pytest.raises(ValueError, match="'wrist' is not in the model.*top"):
        CameraRig(model, data, ("wrist",), 32, 32)
    with pytest.raises(ValueError, match="offscreen buffer"):
        CameraRig(model, data, ("top",), 2000, 2000)
    with pytest.raises(ValueError, match="with_defaults"):
        CameraRig(model, data, (), 32, 32, PointCloudConfig(num_points=8))
    with pytest.raises(ValueError, match="crop_low"):
        PointCloudConfig("top", crop_low=(0.0, 0.0, 1.0), crop_high=(1.0, 1.0, 0.5))
    with pytest.raises(ValueError, match="num_points"):
        PointCloudConfig("top", num_points=0)
    with pytest.raises(ValueError, match="renders nothing"):
        CameraConfig(cameras=())
    with pytest.raises(ValueError, match="twice"):
        CameraConfig(cameras=("top", "top"))


def test_with_defaults_fills_only_unset_fields() -> None:
    mine = PointCloudConfig(camera="side", num_points=64)
    filled = mine.with_defaults("top", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert filled.camera == "side" and filled.crop_low == (0.0, 0.0, 0.0) and filled.num_points == 64


def test_sampling_exact_size_pad_and_spread() -> None:
    rng = np.random.default_rng(0)
    line = np.stack([np.linspace(0, 1, 101), np.zeros(101), np.zeros(101)], axis=1)
    assert sample_points(line, 3, "fps", rng)[:, 0].tolist() == [0.0, 1.0, 0.5]  # extremes first
    assert sample_points(line, 50, "random", rng).shape == (50, 3)
    padded = sample_points(line[:4], 10, "fps", rng)
    assert padded.shape == (10, 3) and np.allclose(padded[:4], line[:4]) and np.allclose(padded[4:8], line[:4])
    assert len(set(farthest_point_indices(line, 20).tolist())) == 20
