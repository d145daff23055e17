"""Splits: module names to contiguous unit ranges, and the balanced cut."""

from __future__ import annotations

import itertools
import random

import pytest

from asyncvid.catalog.presets import build_animatediff_pipeline
from asyncvid.engine.split import SplitPlan, balanced_ranges, compress_names, ranges_from_names
from asyncvid.errors import AsyncVidError
from asyncvid.models import adapter_for


@pytest.fixture(scope="module")
def unet():
    return build_animatediff_pipeline("tiny", seed=0).unet


def test_names_resolve_to_contiguous_ranges(unet):
    names = [u.name for u in adapter_for(unet).units()]
    split = [["conv_in", "down_blocks.0"], ["down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1.resnets.0"],
             ["up_blocks.1.attentions.0", "up_blocks.1.motion_modules.0", "up_blocks.1.resnets.1",
              "up_blocks.1.attentions.1", "up_blocks.1.motion_modules.1", "conv_norm_out"]]
    ranges = ranges_from_names(names, split, {"conv_norm_out": "conv_out"})
    assert ranges[0] == (0, 5) and ranges[-1][1] == len(names)
    plan = SplitPlan(names, ranges)
    assert compress_names(plan.stage_units(1), names) == ["down_blocks.1", "mid_block", "up_blocks.0", "up_blocks.1.resnets.0"]


def test_balanced_ranges_is_optimal():
    rng = random.Random(0)
    for _ in range(200):
        costs = [rng.random() for _ in range(rng.randint(2, 9))]
        n = rng.randint(1, len(costs))
        best = min(
            max(sum(costs[a:b]) for a, b in zip((0,) + cuts, cuts + (len(costs),)))
            for cuts in itertools.combinations(range(1, len(costs)), n - 1)
        )
        got = balanced_ranges(costs, n)
        assert len(got) == n and all(b > a for a, b in got)
        assert max(sum(costs[a:b]) for a, b in got) == pytest.approx(best)


def test_balanced_ranges_with_work_on_the_first_device_is_optimal():
    """The driver's own per-call work (a ControlNet) counts on stage 0: it gets fewer units."""
    rng = random.Random(1)
    for _ in range(200):
        costs = [rng.random() for _ in range(rng.randint(2, 9))]
        n, extra = rng.randint(1, len(costs)), rng.random() * 2
        best = min(
            max(sum(costs[a:b]) + (extra if a == 0 else 0) for a, b in zip((0,) + cuts, cuts + (len(costs),)))
            for cuts in itertools.combinations(range(1, len(costs)), n - 1)
        )
        got = balanced_ranges(costs, n, first_extra=extra)
        assert max(sum(costs[a:b]) + (extra if a == 0 else 0) for a, b in got) == pytest.approx(best)
    assert balanced_ranges([1.0] * 10, 2) == [(0, 5), (5, 10)]
    assert balanced_ranges([1.0] * 10, 2, first_extra=4.0) == [(0, 3), (3, 10)]


def test_more_stages_than_units_is_rejected():
    with pytest.raises(AsyncVidError, match="cannot cut 3 units into 4 stages"):
        balanced_ranges([1.0, 2.0, 3.0], 4)
