import numpy as np
import pytest

from services.method.ab import ab_arm, ab_draw


def test_the_arm_depends_on_the_prompts_only():
    prompts = ["What is 2 plus 2?", "Write a poem."]
    assert {ab_arm(prompts, 0.5) for _ in range(20)} == {ab_arm(list(prompts), 0.5)}
    assert ab_draw(["ab", "c"]) != ab_draw(["a", "bc"])
    assert ab_draw(["x"]) != ab_draw(["x", "x"])


def test_share_b_is_the_share_of_distinct_requests_that_b_serves():
    requests = [[f"request {i}"] for i in range(4000)]
    for share in (0.1, 0.5, 0.8):
        served_b = np.mean([ab_arm(r, share) == "b" for r in requests])
        assert abs(served_b - share) < 0.03, share
    assert {ab_arm(r, 0.0) for r in requests[:200]} == {"a"}
    assert {ab_arm(r, 1.0) for r in requests[:200]} == {"b"}
    # a larger share only moves requests from a to b (the draw is fixed, the threshold moves)
    assert all(ab_arm(r, 0.6) == "b" for r in requests[:500] if ab_arm(r, 0.3) == "b")


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_share_outside_zero_one_is_a_value_error(share):
    with pytest.raises(ValueError):
        ab_arm(["x"], share)
