"""The train feed's read-ahead budget: `ray.feed_memory_mb` becomes Ray Data's object
store limit for the feed, and a budget too small to hold a block is refused."""

from __future__ import annotations

import pytest

from sdpose.config import ConfigError, Params, load_params
from sdpose.data.feed import ingest_options

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("budget", [64, 512, 4096])
def test_the_budget_is_the_feeds_object_store_limit(budget):
    options = ingest_options(Params.model_validate({"ray": {"feed_memory_mb": budget}}))
    assert options.resource_limits.object_store_memory == budget * 2**20
    assert options.resource_limits.cpu == float("inf")  # only the memory is limited


def test_a_budget_below_a_few_blocks_is_a_parameter_error(tmp_path):
    with pytest.raises(ConfigError, match="feed_memory_mb"):
        load_params(tmp_path / "params.yaml", {"ray.feed_memory_mb": 16})
