"""Windows at episode edges, padding masks and the episode-level split."""

import numpy as np
import pytest

from robot.sampler import WindowConfig, WindowSampler, split_episodes


def _data(lengths):
    ends = np.cumsum(lengths)
    t = np.arange(ends[-1])
    episode = np.repeat(np.arange(len(lengths)), lengths)
    return {"observation.state": np.stack([t, episode], 1).astype(np.float32), "action": t.astype(np.float32)[:, None]}, ends


def test_windows_cover_every_step_with_edge_padding():
    data, ends = _data([5, 8])
    cfg = WindowConfig(n_obs_steps=2, horizon=4, n_action_steps=3)
    sampler = WindowSampler(data, ends, cfg)
    # per episode: starts from -pad_before to len - horizon + pad_after
    assert len(sampler) == (5 - 4 + 1 + 2 + 1) + (8 - 4 + 1 + 2 + 1)
    batch = sampler.batch(np.arange(len(sampler)))
    assert batch["observation.state"].shape == (len(sampler), 2, 2)
    assert batch["action"].shape == (len(sampler), 4, 1)
    # no window mixes episodes
    for w in range(len(sampler)):
        assert len(set(batch["observation.state"][w, :, 1])) == 1
    # first window of episode 0 repeats step 0 once (pad_before = 1), flagged as padding
    first = sampler.batch(np.array([0]))
    np.testing.assert_array_equal(first["action"][0, :, 0], [0, 0, 1, 2])
    np.testing.assert_array_equal(first["action_is_pad"][0], [True, False, False, False])
    np.testing.assert_array_equal(first["observation.state"][0, :, 0], [0, 0])
    # last window of episode 0 runs pad_after = 2 steps past its end, repeating step 4
    last = sampler.batch(np.array([4]))
    np.testing.assert_array_equal(last["action"][0, :, 0], [3, 4, 4, 4])
    np.testing.assert_array_equal(last["action_is_pad"][0], [False, False, True, True])
    # the current step (index To - 1) of consecutive windows walks through every step once
    current = batch["action"][~batch["action_is_pad"][:, 1], 1, 0]
    np.testing.assert_array_equal(np.sort(current), np.arange(13))


def test_short_episode_still_gives_a_window():
    data, ends = _data([2, 10])
    sampler = WindowSampler(data, ends, WindowConfig(n_obs_steps=1, horizon=8, n_action_steps=1), episodes=[0])
    batch = sampler.batch(np.arange(len(sampler)))
    assert len(sampler) == 1
    np.testing.assert_array_equal(batch["action"][0, :, 0], [0, 1, 1, 1, 1, 1, 1, 1])


def test_split_is_by_episode_and_deterministic():
    train, val = split_episodes(10, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert (train == split_episodes(10, 0.2, seed=1)[0]).all()
    train, val = split_episodes(2, 0.01)
    assert len(val) == 1 and len(train) == 1
    data, ends = _data([5, 6, 7])
    sampler = WindowSampler(data, ends, WindowConfig(2, 4, 2), episodes=[1])
    batch = sampler.sample(64, np.random.default_rng(0))
    assert set(np.unique(batch["observation.state"][..., 1])) == {1.0}


def test_config_is_validated():
    with pytest.raises(ValueError, match="horizon 4 is too short"):
        WindowConfig(n_obs_steps=3, horizon=4, n_action_steps=3)
