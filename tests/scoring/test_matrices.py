"""Reward matrices from real scorers, and the on-disk cache that makes reruns free."""

import numpy as np
import pytest

from services.method.formats import ParallelRecord
from services.scoring.learnability import LearnabilityScorer
from services.scoring.matrices import QUALITY_MATH_VERIFY, learnability_matrix, quality_matrix

TEACHERS = ["right", "wrong", "absent"]
RECORDS = [
    ParallelRecord(id="m1", prompt="What is 6 times 7?", reference="42",
                   responses={"right": "6 times 7 is 42.", "wrong": "6 times 7 is 48."}),
    ParallelRecord(id="m2", prompt="What is 10 minus 3?", reference="7",
                   responses={"right": "10 - 3 = 7", "wrong": "The answer is 13.", "absent": "7"}),
]


@pytest.fixture(scope="module")
def student():
    return LearnabilityScorer("smollm2-135m-instruct")


def test_math_verify_quality_and_missing_teachers():
    q = quality_matrix(RECORDS, TEACHERS, QUALITY_MATH_VERIFY)
    np.testing.assert_array_equal(q[:, :2], [[1.0, 0.0], [1.0, 0.0]])
    assert np.isnan(q[0, 2]) and q[1, 2] == 1.0


def test_quality_sources_need_their_fields():
    with pytest.raises(ValueError, match="'quality' object"):
        quality_matrix(RECORDS, TEACHERS, "file")
    no_ref = [ParallelRecord(id="x", prompt="p", responses={"right": "1"})]
    with pytest.raises(ValueError, match="'reference'"):
        quality_matrix(no_ref, TEACHERS, QUALITY_MATH_VERIFY)


def test_learnability_matrix_matches_the_scorer_and_reruns_from_cache(student, score_cache):
    first = learnability_matrix(RECORDS, TEACHERS, "smollm2-135m-instruct", cache=score_cache, scorer=student)
    expected = student.score([(RECORDS[0].prompt, RECORDS[0].responses["right"])])[0]
    assert first[0, 0] == pytest.approx(expected, abs=1e-6)
    assert np.isnan(first[0, 2]) and np.isfinite(first[1]).all()

    class MustNotRun:
        precision = student.precision  # same cache keys as the scorer that filled the cache

        def score(self, items, progress=False):
            raise AssertionError(f"recomputed {len(items)} cached scores")

    again = learnability_matrix(RECORDS, TEACHERS, "smollm2-135m-instruct", cache=score_cache, scorer=MustNotRun())
    np.testing.assert_array_equal(np.isnan(first), np.isnan(again))
    np.testing.assert_allclose(first[np.isfinite(first)], again[np.isfinite(again)])


def test_a_changed_response_is_scored_afresh(student, score_cache):
    learnability_matrix(RECORDS, TEACHERS, "smollm2-135m-instruct", cache=score_cache, scorer=student)
    changed = [ParallelRecord(id="m1", prompt=RECORDS[0].prompt, responses={"right": "It is 42, clearly."})]
    calls = []

    class Counting:
        precision = student.precision

        def score(self, items, progress=False):
            calls.append(list(items))
            return student.score(items)

    learnability_matrix(changed, TEACHERS, "smollm2-135m-instruct", cache=score_cache, scorer=Counting())
    assert calls == [[(RECORDS[0].prompt, "It is 42, clearly.")]]


def test_empty_response_names_prompt_and_teacher():
    bad = [ParallelRecord(id="e1", prompt="p", responses={"right": "  "})]
    with pytest.raises(ValueError, match="prompt 'e1': teacher 'right' has an empty response"):
        learnability_matrix(bad, TEACHERS, "smollm2-135m-instruct")
