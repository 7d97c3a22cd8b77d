"""Generation counts of the two orders of work."""

from services.method.costs import generation_counts


def test_generation_counts_match_the_spec_example():
    counts = generation_counts(50_000, 19, 2_500)
    assert counts == {"generate_then_select": 950_000, "route_then_generate": 95_000}
