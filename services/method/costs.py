"""What a job costs in teacher generations: Generate-then-Select against Route-then-Generate."""

from __future__ import annotations


def generation_counts(n_prompts: int, n_teachers: int, n_calibration: int) -> dict[str, int]:
    """Generations needed by Generate-then-Select versus Route-then-Generate."""
    n_calibration = min(n_calibration, n_prompts)
    return {
        "generate_then_select": n_prompts * n_teachers,
        "route_then_generate": n_prompts + n_calibration * (n_teachers - 1),
    }
