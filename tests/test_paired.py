"""Paired comparisons on the same seeds: the sign test and the noise-aware pick online RL's selection uses."""

import pytest

from workflow.paired import mean_steps_to_success, pick_beyond_noise, sign_test_p, wilson_interval, wins_losses


def test_wins_and_losses_count_the_episodes_only_one_policy_solved():
    assert wins_losses([1, 1, 0, 0, 1], [1, 0, 1, 1, 1]) == (2, 1)
    with pytest.raises(ValueError, match="same seeds"):
        wins_losses([1, 0], [1])


def test_sign_test_matches_hand_computed_binomial_tails():
    assert sign_test_p(9, 1) == pytest.approx(22 / 1024)  # 2 * (C(10,9) + C(10,10)) / 2^10
    assert sign_test_p(1, 9) == pytest.approx(22 / 1024)
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(3, 3) == 1.0
    assert sign_test_p(2, 0, "greater") == pytest.approx(0.25)
    assert sign_test_p(5, 2, "greater") == pytest.approx(29 / 128)
    assert sign_test_p(27, 11) == pytest.approx(0.01385, abs=1e-5)  # imitation on five vs four lift demonstrations (issue 25)


def test_a_challenger_replaces_the_incumbent_only_beyond_noise():
    start = [0] * 16
    assert pick_beyond_noise([start, [0] * 16, [0] * 16], 0.25) == 0  # a tie at 0%: the start, whatever the returns
    assert pick_beyond_noise([start, [1] + [0] * 15], 0.25) == 0  # one win alone: p = 0.5
    assert pick_beyond_noise([start, [1, 1] + [0] * 14, [1, 1, 1] + [0] * 13], 0.25) == 2  # the most successes
    assert pick_beyond_noise([start, [1, 1] + [0] * 14, [0, 0, 1, 1] + [0] * 12], 0.25) == 1  # the earliest on ties
    mixed = [1, 1, 1, 0, 0, 0] + [0] * 10
    assert pick_beyond_noise([mixed, [0, 1, 1, 1, 1, 1] + [0] * 10], 0.25) == 0  # 3 wins, 1 loss: p = 0.31
    assert pick_beyond_noise([start], 0.25) == 0


def test_wilson_interval_matches_hand_computed_bounds():
    # 8/10, z = 1.96: centre (0.8 + 0.19208) / 1.38416, half 1.96 * sqrt(0.016 + 0.009604) / 1.38416
    assert wilson_interval(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)  # never empty at 0%
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(170, 200) == pytest.approx((0.7939, 0.8929), abs=1e-4)  # centre 0.859604 / 1.019208, half 0.049461
    assert wilson_interval(50, 100, confidence=0.5) == pytest.approx((0.4664, 0.5336), abs=1e-4)  # z = 0.67449: half 0.033647
    with pytest.raises(ValueError, match="3 of 2"):
        wilson_interval(3, 2)
    with pytest.raises(ValueError, match="episodes >= 1"):
        wilson_interval(0, 0)


def test_mean_steps_to_success_counts_the_successful_episodes_only():
    assert mean_steps_to_success([True, False, True], [10, 200, 30]) == 20.0
    assert mean_steps_to_success([False, False], [200, 200]) is None
    with pytest.raises(ValueError, match="one length per episode"):
        mean_steps_to_success([True], [1, 2])


def test_the_paired_table_compares_every_row_with_the_first_on_the_same_seeds():
    from workflow.paired import paired_table

    first, second = [True, True, False, False], [True, False, True, True]
    table = paired_table(["a", "b"], [first, second], [[10, 20, 100, 100], [30, 100, 40, 50]], title="t")
    lines = table.splitlines()
    assert lines[0] == "t" and "vs a (same seeds)" in lines[1]
    assert lines[3].split()[:2] == ["a", "50.0%"] and lines[3].split()[-1] == "-"
    assert lines[4].split()[:2] == ["b", "75.0%"] and "2 won, 1 lost, p = 1" in lines[4] and " 40 " in lines[4]  # mean of 30, 40, 50
    with pytest.raises(ValueError, match="one name"):
        paired_table(["a"], [first, second], [[1] * 4])
