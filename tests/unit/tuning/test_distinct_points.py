"""A search over a finite space spends its budget: distinct configurations, seeded."""

from __future__ import annotations

import pytest

from sdpose.tuning.space import distinct_points

pytestmark = pytest.mark.unit

SPACE = {"model.cycles": {"choice": [1, 2, 3]}, "model.dim": {"choice": [48, 64, 96]}}


def keys(points):
    return [tuple(sorted(point.items())) for point in points]


def test_four_samples_of_nine_points_are_four_distinct_configurations():
    points, note = distinct_points(SPACE, 4, seed=0)
    assert len(points) == 4 and len(set(keys(points))) == 4 and note is None
    assert all(point["model.cycles"] in (1, 2, 3) for point in points)
    assert distinct_points(SPACE, 4, seed=0)[0] == points  # seeded: a resumed search agrees
    assert any(distinct_points(SPACE, 4, seed=seed)[0] != points for seed in range(1, 6))


def test_a_budget_that_covers_the_space_visits_every_point_once():
    points, note = distinct_points(SPACE, 9, seed=3)
    assert len(set(keys(points))) == 9 and note is None


def test_beyond_the_space_the_repeats_are_said():
    points, note = distinct_points(SPACE, 12, seed=1)
    assert len(points) == 12 and len(set(keys(points))) == 9
    assert "holds 9 configurations" in note and "3 trials repeat" in note


def test_randint_is_finite_and_continuous_domains_are_left_to_tune():
    points, _ = distinct_points({"model.depth": {"randint": [1, 4]}}, 3, seed=0)
    assert sorted(point["model.depth"] for point in points) == [1, 2, 3]
    mixed = {**SPACE, "train.lr": {"loguniform": [1e-4, 1e-2]}}
    assert distinct_points(mixed, 4, seed=0) == (None, None)
