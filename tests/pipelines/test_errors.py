"""Failures end every rank quickly with one line; bad configurations fail before any work."""

from __future__ import annotations

import time

import pytest

import _workers
from asyncvid.errors import RankFailure
from asyncvid.launch import launch_local


pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize("failing_rank", [0, 1])
def test_a_failing_rank_ends_all_ranks_with_one_line(failing_rank):
    start = time.monotonic()
    with pytest.raises(RankFailure) as info:
        launch_local(_workers.fail_mid_call, 2, dict(stages=2, warmup=1, split="auto"), failing_rank, timeout=120)
    assert time.monotonic() - start < 60
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"rank {failing_rank} failed: RuntimeError: injected failure")


@pytest.mark.parametrize(
    "nprocs,options,expected",
    [
        (2, dict(stages=3), "world size 2 does not match stages=3"),
        (2, dict(stages=2, split=[["conv_in", "down_blocks"], ["nope", "up_blocks", "conv_out"]]), "'nope'"),
        (2, dict(stages=2, split=[["conv_in", "up_blocks"], ["down_blocks", "mid_block", "conv_out"]]), "not contiguous"),
        (2, dict(stages=2, split=[["conv_in", "down_blocks"], ["up_blocks", "conv_out"]]), "no stage runs mid_block"),
        (2, dict(stages=2, warmup=0), "warmup must be >= 1"),
        (1, dict(stages=1, stride=3), "stride must be 1 or 2"),
    ],
)
def test_bad_configuration_fails_before_work(nprocs, options, expected):
    with pytest.raises(RankFailure) as info:
        launch_local(_workers.just_parallelize, nprocs, options, timeout=60)
    assert expected in str(info.value) and "\n" not in str(info.value)
