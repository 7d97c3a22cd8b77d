import numpy as np
import pytest

from services.method.hybrid import hybrid_choices, runner_up

STRENGTHS = np.array([[2.0, 1.9, 0.0],    # gap 0.1: ambiguous below a margin above 0.1
                      [3.0, 0.0, 1.0],    # gap 2.0
                      [0.0, 0.5, 0.45]])  # gap 0.05, runner-up teacher 2


def test_the_runner_up_is_named_only_where_the_gap_is_below_the_margin():
    assert runner_up(STRENGTHS, 0.0).tolist() == [-1, -1, -1]
    assert runner_up(STRENGTHS, 0.08).tolist() == [-1, -1, 2]
    assert runner_up(STRENGTHS, 0.5).tolist() == [1, -1, 2]
    assert runner_up(STRENGTHS, 5.0).tolist() == [1, 2, 2]
    assert runner_up(np.array([[1.0, 1.0, 0.0]]), 0.1).tolist() == [1]  # a tie: the first is the pick
    assert runner_up(np.ones((2, 1)), 1.0).tolist() == [-1, -1]


def test_an_ambiguous_prompt_keeps_the_better_of_its_top_two_by_reward():
    rewards = np.array([[0.1, 0.9, 5.0],      # teacher 2 is best overall but not in the top two
                        [0.0, 9.0, 1.0],      # not ambiguous at 0.5: the router's pick stands
                        [0.0, np.nan, 1.0]])  # the runner-up has a reward, the pick none
    chosen, ambiguous = hybrid_choices(STRENGTHS, rewards, 0.5)
    assert chosen.tolist() == [1, 0, 2] and ambiguous.tolist() == [True, False, True]
    chosen, ambiguous = hybrid_choices(STRENGTHS, rewards, 0.0)
    assert chosen.tolist() == [0, 0, 1] and not ambiguous.any()
    tied, _ = hybrid_choices(STRENGTHS, np.ones((3, 3)), 5.0)
    assert tied.tolist() == [0, 0, 1]  # a tie keeps the router's pick


@pytest.mark.parametrize("strengths, margin", [(np.ones(3), 0.1), (np.ones((2, 3)), -0.1)])
def test_bad_arguments_are_value_errors(strengths, margin):
    with pytest.raises(ValueError):
        runner_up(strengths, margin)
