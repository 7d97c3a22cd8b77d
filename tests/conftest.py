"""Shared fixtures: the real data in ../shared/data and a per-session score cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data(name: str) -> Path:
    """A file of ../shared/data; skip without it, except in CI where it must be there."""
    path = SHARED_DATA / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing in CI")
        pytest.skip(f"{path} not found (the shared data sits beside the project checkout)")
    return path


@pytest.fixture(scope="session")
def arena_path() -> Path:
    return shared_data("arena_parallel.jsonl")


@pytest.fixture(scope="session")
def score_cache(tmp_path_factory):
    from services.core.cache import ScoreCache

    return ScoreCache(tmp_path_factory.mktemp("cache") / "scores.sqlite")
