"""Windows at episode edges, padding masks and the episode-level split."""

import numpy as np
import pytest

from robot.sampler import WindowConfig, WindowSampler, split_episodes


def _data(lengths):
    ends = np.cumsum(lengths)
    t = np.arange(ends[-1])
    episode = np.repeat(np.arange(len(lengths)), lengths)
    return {"observation.state": np.stack([t, episode], 1).astype(np.float32), "action": t.astype(np.float32)[:, None]}, ends


def test_every_step_is_the_current_step_of_one_window():
    data, ends = _data([5, 8])
    sampler = WindowSampler(data, ends, WindowConfig(n_obs_steps=2, horizon=4))
    assert len(sampler) == 13
    batch = sampler.batch(np.arange(len(sampler)))
    assert batch["observation.state"].shape == (13, 2, 2) and batch["action"].shape == (13, 4, 1)
    np.testing.assert_array_equal(batch["observation.state"][:, -1, 0], np.arange(13))  # last obs frame = current step
    np.testing.assert_array_equal(batch["action"][:, 0, 0], np.arange(13))  # first action = current step
    for w in range(13):  # no window mixes episodes
        assert len(set(batch["observation.state"][w, :, 1])) == 1


def test_edges_repeat_the_edge_frame_and_flag_padded_actions():
    data, ends = _data([5, 8])
    sampler = WindowSampler(data, ends, WindowConfig(n_obs_steps=3, horizon=4))
    first = sampler.batch(np.array([0]))  # step 0: two observation frames before the start
    np.testing.assert_array_equal(first["observation.state"][0, :, 0], [0, 0, 0])
    np.testing.assert_array_equal(first["action"][0, :, 0], [0, 1, 2, 3])
    assert not first["action_is_pad"].any()
    second_episode = sampler.batch(np.array([5]))  # episode 1 starts at frame 5: never sees episode 0
    np.testing.assert_array_equal(second_episode["observation.state"][0, :, 0], [5, 5, 5])
    last = sampler.batch(np.array([3]))  # step 3 of a 5-step episode: actions run 2 past the end
    np.testing.assert_array_equal(last["action"][0, :, 0], [3, 4, 4, 4])
    np.testing.assert_array_equal(last["action_is_pad"][0], [False, False, True, True])


def test_split_is_by_episode_and_deterministic():
    train, val = split_episodes(10, 0.2, seed=1)
    assert len(val) == 2 and len(train) == 8 and not set(train) & set(val)
    assert (train == split_episodes(10, 0.2, seed=1)[0]).all()
    train, val = split_episodes(2, 0.01)
    assert len(val) == 0 and len(train) == 2


def test_split_never_costs_a_demonstration_when_there_are_few():
    """Five demonstrations at the default 10%: all five train (a validation loss is not worth one of five)."""
    train, val = split_episodes(5, 0.1, seed=3)
    assert len(train) == 5 and len(val) == 0
    train, val = split_episodes(10, 0.1, seed=3)
    assert len(train) == 9 and len(val) == 1
    train, val = split_episodes(3, 0.9, seed=3)
    assert len(train) == 1 and len(val) == 2
    data, ends = _data([5, 6, 7])
    sampler = WindowSampler(data, ends, WindowConfig(2, 4), episodes=[1])
    batch = sampler.sample(64, np.random.default_rng(0))
    assert set(np.unique(batch["observation.state"][..., 1])) == {1.0}
    assert len(sampler) == 6


def test_config_is_validated():
    with pytest.raises(ValueError, match="must be >= 1"):
        WindowConfig(n_obs_steps=0, horizon=4)


def test_flagged_segments_are_runs_of_flags_that_stop_at_episode_ends():
    from robot.sampler import flagged_segments

    flags = np.array([0, 1, 1, 0, 1, 1, 1, 0, 0, 1], dtype=bool)  # episodes [0, 5) and [5, 10)
    assert flagged_segments(flags, np.array([5, 10]), [0, 1]) == [(0, 1, 3), (0, 4, 5), (5, 5, 7), (5, 9, 10)]
    assert flagged_segments(flags, np.array([5, 10]), [1]) == [(5, 5, 7), (5, 9, 10)]
    sampler = WindowSampler({"observation.state": np.arange(10.0)[:, None], "action": np.arange(10.0)[:, None]}, np.array([5, 10]),
                            WindowConfig(n_obs_steps=2, horizon=3), episodes=[], segments=[(5, 5, 7)])  # fmt: skip
    batch = sampler.batch(np.arange(len(sampler)))
    assert batch["action"][:, :, 0].tolist() == [[5, 6, 6], [6, 6, 6]]  # targets stop at the segment's end
    assert batch["observation.state"][:, :, 0].tolist() == [[5, 5], [5, 6]]
